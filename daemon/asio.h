// Boost.Asio, included in one place: Boost 1.74's awaitable.hpp uses std::exchange without
// including <utility>, which GCC 12 no longer pulls in transitively.
#pragma once

#include <utility>

#include <boost/asio.hpp>
