// A stand-in emulator for root tests: its main thread exits at once while a second thread
// keeps running, holding every fd the helper passed (taps, monitor socket).
//
// /proc then shows the thread-group leader as a zombie ('Z') although the process is alive and
// still owns its taps and disks: the state an emulator reaches if its main thread dies (for
// example killed alone by a seccomp KILL_THREAD action). Whoever decides from /proc state
// letters that such a process is dead is wrong; its pidfd tells the truth.
#include <pthread.h>
#include <unistd.h>

namespace {

void* keep_running(void*) {
  for (;;) ::pause();
  return nullptr;
}

}  // namespace

int main() {
  pthread_t thread;
  if (::pthread_create(&thread, nullptr, keep_running, nullptr) != 0) return 1;
  ::pthread_exit(nullptr);  // only the main thread ends; the process lives on in `thread`
}
