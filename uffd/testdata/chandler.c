// chandler: a minimal userfaultfd page server in C, the baseline for
// uffd's BenchmarkFault. Same protocol as mvm-uffd (Firecracker's handshake),
// same fault path: poll, read a batch of uffd_msg, one UFFDIO_COPY per fault
// from a MAP_SHARED|MAP_POPULATE mapping of the memory file. Single region,
// 4 KiB pages, no holes, no remove handling, no prefetch.
//
// usage: chandler <socket> <memfile>; prints "ready" once listening and,
// when the peer hangs up, "faults <n> cpu-ns <ns>" (the CPU it used from the
// handshake on) and exits.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

static void die(const char *what) { perror(what); exit(1); }

static uint64_t cpu_ns(void) {
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000000ULL +
	       (uint64_t)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1000ULL;
}

static uint64_t field(const char *json, const char *name) {
	const char *p = strstr(json, name);
	if (!p) { fprintf(stderr, "chandler: no %s in %s\n", name, json); exit(1); }
	return strtoull(p + strlen(name) + 1, NULL, 10);
}

int main(int argc, char **argv) {
	if (argc != 3) { fprintf(stderr, "usage: chandler <socket> <memfile>\n"); return 2; }
	int mfd = open(argv[2], O_RDONLY | O_CLOEXEC);
	if (mfd < 0) die("open memfile");
	struct stat st;
	if (fstat(mfd, &st) < 0) die("fstat");
	char *mem = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED | MAP_POPULATE, mfd, 0);
	if (mem == MAP_FAILED) die("mmap");

	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	strncpy(sa.sun_path, argv[1], sizeof(sa.sun_path) - 1);
	unlink(argv[1]);
	if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) < 0) die("bind");
	if (listen(lfd, 1) < 0) die("listen");
	printf("ready\n");
	fflush(stdout);
	int conn = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
	if (conn < 0) die("accept");
	close(lfd);
	unlink(argv[1]);

	char buf[65536];
	char cbuf[CMSG_SPACE(sizeof(int))];
	struct iovec iov = {.iov_base = buf, .iov_len = sizeof(buf) - 1};
	struct msghdr mh = {.msg_iov = &iov, .msg_iovlen = 1, .msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
	ssize_t n = recvmsg(conn, &mh, MSG_CMSG_CLOEXEC);
	if (n <= 0) die("recvmsg");
	buf[n] = 0;
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);
	if (!cm || cm->cmsg_type != SCM_RIGHTS) { fprintf(stderr, "chandler: no fd\n"); return 1; }
	int uffd;
	memcpy(&uffd, CMSG_DATA(cm), sizeof(int));
	uint64_t base = field(buf, "\"base_host_virt_addr\""), size = field(buf, "\"size\""), off = field(buf, "\"offset\"");
	if (off + size > (uint64_t)st.st_size) { fprintf(stderr, "chandler: region beyond file\n"); return 1; }

	uint64_t cpu0 = cpu_ns();
	struct pollfd pfd[2] = {{.fd = uffd, .events = POLLIN}, {.fd = conn, .events = POLLRDHUP}};
	struct uffd_msg msgs[64];
	unsigned long faults = 0;
	for (;;) {
		if (poll(pfd, 2, -1) < 0) continue;
		if (pfd[1].revents) break;
		ssize_t r = read(uffd, msgs, sizeof(msgs));
		if (r < 0) continue;
		for (int i = 0; i < r / (ssize_t)sizeof(msgs[0]); i++) {
			if (msgs[i].event != UFFD_EVENT_PAGEFAULT) continue;
			uint64_t page = msgs[i].arg.pagefault.address & ~4095ULL;
			struct uffdio_copy c = {.dst = page, .src = (uint64_t)(mem + off + (page - base)), .len = 4096};
			if (ioctl(uffd, UFFDIO_COPY, &c) < 0 && errno != EEXIST) die("UFFDIO_COPY");
			faults++;
		}
	}
	printf("faults %lu cpu-ns %lu\n", faults, (unsigned long)(cpu_ns() - cpu0));
	return 0;
}
