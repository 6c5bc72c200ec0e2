// Package image builds bootable guest root file systems without root
// privileges, loop devices or mounts. It is for programs that make guest
// images (`mvm image build` is one; package image/store keeps them) and
// for the firecracker runtime, which gives each VM its own clone of an
// image ([Clone]).
//
// [BuildExt4] turns a directory into an ext4 image with e2fsprogs'
// `mke2fs -d` (Debian package e2fsprogs), run as a plain process with an
// argument vector, never a shell. [BuildRootFS] stages a minimal image
// around the project's guest agent (cmd/mvm-agent, package agent): the
// agent as /sbin/init (and /init), a static busybox (Debian package
// busybox-static) with its applets linked in /bin, a few /etc files and the
// mount points the agent uses (/proc, /sys, /dev, /tmp, /run), optionally
// over a directory of the caller's own files. Booted with a kernel such as
// Firecracker's CI guest kernel (root=/dev/vda, console=ttyS0), the image
// prints the agent's ready marker on the console and serves the agent's
// protocol on vsock and on the console.
//
// [BuildFromTar], [BuildFromDir] and [BuildFromLayers] build images from a
// tar archive (plain or gzip), a directory, or tar streams applied as OCI
// layers (whiteouts honoured; package image/oci reads OCI layouts and
// docker-save archives). Entries are unpacked into a private staging
// directory; hostile ones (absolute names, "..", writes through symbolic
// links, hard links out of the tree, device nodes, sizes over [Limits])
// fail with [ErrUnsafeEntry], unreadable input with [ErrBadArchive].
// Without root, ownership and what the staging tree cannot hold are set
// in the image afterwards with debugfs. [BuildOptions].Agent installs
// mvm-agent as /sbin/init.
//
// [Clone] gives a VM its own copy of an image: a reflink where the file
// system has it, else a sparse copy; optionally grown with resize2fs.
//
// Images are written atomically: mke2fs writes a temporary file beside the
// output, which is renamed over it only when complete, so a failed or
// cancelled build leaves nothing at the output path.
//
// File ownership in the image is that of the staged files: built as root,
// every file is owned by root; built by another user, the files keep that
// user's ids (the agent, running as PID 1, does not mind).
package image
