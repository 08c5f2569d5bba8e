// The root suite: real kernel objects. Refuses to run as non-root (meson counts 77 as skipped).
#define DOCTEST_CONFIG_IMPLEMENT
#include <doctest/doctest.h>
#include <unistd.h>

#include <cstdio>

int main(int argc, char** argv) {
  if (::geteuid() != 0) {
    std::fprintf(stderr, "the root suite needs root: it creates namespaces, taps and bridges\n");
    return 77;
  }
  doctest::Context context(argc, argv);
  return context.run();
}
