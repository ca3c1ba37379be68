/* The init process of every pod sandbox on the test cluster's real node (containerd's
 * sandbox_image). A registry would serve registry.k8s.io/pause; none is reachable here, so this is
 * built from source by hack/build-control-plane.sh and imported by hack/control-plane.sh.
 *
 * It holds the pod's namespaces open by staying alive, reaps the zombies of processes that end up
 * parented to it (PID 1 of a shared PID namespace), and exits on SIGINT or SIGTERM. Written by hand
 * because it is the whole program: a library would not make it shorter. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void leave(int sig) {
  (void)sig;
  _exit(0);
}

static void reap(int sig) {
  (void)sig;
  while (waitpid(-1, NULL, WNOHANG) > 0) {
  }
}

int main(void) {
  if (getpid() != 1) fprintf(stderr, "pause: warning: not PID 1\n");
  struct sigaction stop = {.sa_handler = leave};
  struct sigaction child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
  if (sigaction(SIGINT, &stop, NULL) < 0 || sigaction(SIGTERM, &stop, NULL) < 0 ||
      sigaction(SIGCHLD, &child, NULL) < 0) {
    perror("pause: sigaction");
    return 1;
  }
  for (;;) pause();
}
