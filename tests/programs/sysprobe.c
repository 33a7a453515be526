/* sysprobe NAME...: make each named system call and print NAME=0 or NAME=ERRNO_NAME.

   The namespace stage1's tests run it inside a container to see what its seccomp
   filter does: a denied call must fail with EPERM (not ENOSYS, and not kill the
   process), and --seccomp unconfined or a capability must let it through. Each
   call is one that succeeds (or fails with another errno) for root in a container
   without the filter, so that only the filter can make it EPERM. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <termios.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

static long clone_new_user(void) {
    long pid = syscall(SYS_clone, 0x10000000 /* CLONE_NEWUSER */ | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, NULL, 0);
    return pid;
}

static long read_own_memory(void) {
    char source[8] = "sdrun", copy[8];
    struct iovec local = {copy, sizeof copy}, remote = {source, sizeof source};
    return syscall(SYS_process_vm_readv, getpid(), &local, 1, &remote, 1, 0);
}

static long handle_of_root(void) {
    struct { unsigned int bytes; int type; } handle = {0, 0}; /* too small: EOVERFLOW when allowed */
    int mount_id;
    return syscall(SYS_name_to_handle_at, AT_FDCWD, "/dev", &handle, &mount_id, 0); /* a tmpfs */
}

static long own_fd_through_pidfd(void) {
    long pidfd = syscall(SYS_pidfd_open, getpid(), 0);
    if (pidfd < 0)
        return pidfd;
    return syscall(SYS_pidfd_getfd, pidfd, 0, 0);
}

static long probe(const char *name) {
    if (!strcmp(name, "getpid"))
        return syscall(SYS_getpid);
    if (!strcmp(name, "getcpu")) /* allowed: libcs call it when the vDSO cannot answer */
        return syscall(SYS_getcpu, NULL, NULL, NULL);
    if (!strcmp(name, "get_mempolicy")) /* with SYS_NICE only, as in Docker's profile */
        return syscall(SYS_get_mempolicy, NULL, NULL, 0, NULL, 0);
    if (!strcmp(name, "set_mempolicy")) /* MPOL_DEFAULT */
        return syscall(SYS_set_mempolicy, 0, NULL, 0);
    if (!strcmp(name, "pidfd_getfd")) /* a copy of our own stdin: with SYS_PTRACE only */
        return own_fd_through_pidfd();
    if (!strcmp(name, "raw-socket")) /* the kernel's check: NET_RAW */
        return socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
    if (!strcmp(name, "icmp-socket")) /* ping without NET_RAW, where ping_group_range allows */
        return socket(AF_INET, SOCK_DGRAM, IPPROTO_ICMP);
    if (!strcmp(name, "vsock")) /* EAFNOSUPPORT where the kernel has no vsock, when allowed */
        return socket(40 /* AF_VSOCK */, SOCK_STREAM, 0);
    if (!strcmp(name, "vsock-high")) /* the same family, with high bits set that the kernel ignores */
        return syscall(SYS_socket, 0x100000000UL | 40, SOCK_STREAM, 0);
    if (!strcmp(name, "alg")) /* the kernel's crypto API */
        return socket(38 /* AF_ALG */, SOCK_SEQPACKET, 0);
    if (!strcmp(name, "inet")) /* an ordinary socket */
        return socket(AF_INET, SOCK_STREAM, 0);
    if (!strcmp(name, "tiocsti")) /* push a space into the input of the terminal on stdin */
        return ioctl(0, TIOCSTI, " ");
    if (!strcmp(name, "tiocsti-high")) /* the same, with high bits set that the kernel ignores */
        return syscall(SYS_ioctl, 0, 0x100000000UL | TIOCSTI, " ");
    if (!strcmp(name, "tcgets")) { /* an ordinary terminal ioctl */
        struct termios settings;
        return ioctl(0, TCGETS, &settings);
    }
    if (!strcmp(name, "keyctl")) /* KEYCTL_GET_KEYRING_ID of the session keyring, not creating it */
        return syscall(SYS_keyctl, 0, -3, 0);
    if (!strcmp(name, "unshare-user"))
        return syscall(SYS_unshare, 0x10000000);
    if (!strcmp(name, "clone-user"))
        return clone_new_user();
    if (!strcmp(name, "clone3")) /* a zero-sized argument: EINVAL when allowed */
        return syscall(SYS_clone3, NULL, 0);
    if (!strcmp(name, "mount"))
        return syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, NULL);
    if (!strcmp(name, "userfaultfd")) /* UFFD_USER_MODE_ONLY: no privilege needed */
        return syscall(SYS_userfaultfd, 1);
    if (!strcmp(name, "personality")) /* ADDR_NO_RANDOMIZE */
        return syscall(SYS_personality, 0x0040000);
    if (!strcmp(name, "process_vm_readv"))
        return read_own_memory();
    if (!strcmp(name, "name_to_handle_at"))
        return handle_of_root();
    errno = EINVAL;
    fprintf(stderr, "sysprobe: unknown probe %s\n", name);
    return -2;
}

int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        errno = 0;
        long result = probe(argv[i]);
        if (result == -2)
            return 2;
        printf("%s=%s\n", argv[i], result >= 0 ? "0" : strerrorname_np(errno));
        fflush(stdout);
    }
    return 0;
}
