// Runs the real helper as if the kernel answered Landlock's system calls with one errno: the
// test of a kernel without Landlock (ENOSYS) and of a filter that refuses it (EPERM), on a
// kernel that has it. Root needs no no_new_privs to install the filter.
//
// Environment: VMLAUNCH_REAL_HELPER (the program to execute with this argv and environment),
// VMLAUNCH_LANDLOCK_ERRNO (the errno number).
#include <seccomp.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <initializer_list>

int main(int, char** argv, char** envp) {
  const char* helper = std::getenv("VMLAUNCH_REAL_HELPER");
  const char* err = std::getenv("VMLAUNCH_LANDLOCK_ERRNO");
  if (!helper || !err) {
    std::fprintf(stderr, "landlock_blocker: VMLAUNCH_REAL_HELPER and VMLAUNCH_LANDLOCK_ERRNO must be set\n");
    return 2;
  }
  scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
  if (!ctx) return 2;
  for (const char* name : {"landlock_create_ruleset", "landlock_add_rule", "landlock_restrict_self"})
    if (seccomp_rule_add(ctx, SCMP_ACT_ERRNO(static_cast<unsigned>(std::atoi(err))), seccomp_syscall_resolve_name(name), 0) < 0)
      return 2;
  if (seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0) < 0 || seccomp_load(ctx) < 0) return 2;
  seccomp_release(ctx);
  ::execve(helper, argv, envp);
  std::perror("landlock_blocker: execve");
  return 2;
}
