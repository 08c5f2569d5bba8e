#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>

#include <csignal>

int main(int argc, char** argv) {
  // The daemon's code runs inside vmlaunchd, which ignores SIGPIPE: a peer that hangs up is an
  // error value there, so it must be one here too, not the death of the whole test program.
  ::signal(SIGPIPE, SIG_IGN);
  return doctest::Context(argc, argv).run();
}
