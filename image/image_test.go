package image_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/internal/guesttest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

// debugfs runs a debugfs request on img and returns its output.
func debugfs(t *testing.T, img, request string) string {
	t.Helper()
	var stderr bytes.Buffer
	cmd := exec.Command(guesttest.Tool("debugfs"), "-R", request, img)
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v\n%s", request, err, stderr.String())
	}
	return string(out)
}

// fsck fails t unless e2fsck -fn finds img clean.
func fsck(t *testing.T, img string) {
	t.Helper()
	out, err := exec.Command(guesttest.Tool("e2fsck"), "-fn", img).CombinedOutput()
	if err != nil {
		t.Fatalf("e2fsck -fn %s: %v\n%s", img, err, out)
	}
}

// lsLine returns the `ls -l` line of name in debugfs's listing of dir.
func lsLine(t *testing.T, img, dir, name string) string {
	t.Helper()
	for _, l := range strings.Split(debugfs(t, img, "ls -l "+dir), "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && f[len(f)-1] == name {
			return l
		}
	}
	t.Fatalf("%s has no %s:\n%s", dir, name, debugfs(t, img, "ls -l "+dir))
	return ""
}

// noLeftovers fails t if dir holds anything but the names given.
func noLeftovers(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		ok := false
		for _, w := range want {
			ok = ok || e.Name() == w
		}
		if !ok {
			t.Errorf("left in %s: %s", dir, e.Name())
		}
	}
}

func TestBuildExt4(t *testing.T) {
	guesttest.RequireImageTools(t)
	src := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(src, "etc", "app"), 0o755))
	must(os.WriteFile(filepath.Join(src, "etc", "app", "conf"), []byte("key=value\n"), 0o640))
	must(os.WriteFile(filepath.Join(src, "run.sh"), []byte("#!/bin/sh\necho hi\n"), 0o750))
	must(os.Symlink("etc/app/conf", filepath.Join(src, "link")))
	must(os.Link(filepath.Join(src, "run.sh"), filepath.Join(src, "hard")))
	must(os.WriteFile(filepath.Join(src, "big"), bytes.Repeat([]byte{7}, 3<<20), 0o644))

	outDir := t.TempDir()
	img := filepath.Join(outDir, "disk.ext4")
	must(os.WriteFile(img, []byte("old content"), 0o644)) // replaced atomically
	if err := image.BuildExt4(ctxT(t), src, img, &image.Ext4Options{Label: "data"}); err != nil {
		t.Fatalf("BuildExt4: %v", err)
	}
	fsck(t, img)
	noLeftovers(t, outDir, "disk.ext4")
	fi, err := os.Stat(img)
	must(err)
	// content (~3 MiB) + a quarter + 16 MiB, whole MiB
	if fi.Size() < 19<<20 || fi.Size() > 21<<20 || fi.Size()%(1<<20) != 0 {
		t.Errorf("image size %d, want about 20 MiB, whole MiB", fi.Size())
	}
	if got := debugfs(t, img, "cat /etc/app/conf"); got != "key=value\n" {
		t.Errorf("/etc/app/conf = %q", got)
	}
	if l := lsLine(t, img, "/etc/app", "conf"); !strings.Contains(l, "100640") {
		t.Errorf("conf mode: %s", l)
	}
	if l := lsLine(t, img, "/", "run.sh"); !strings.Contains(l, "100750") || !strings.Contains(l, "(2)") && !strings.Contains(debugfs(t, img, "stat /run.sh"), "Links: 2") {
		t.Errorf("run.sh: %s (want mode 100750 and two links)", l)
	}
	if got := debugfs(t, img, "stat /link"); !strings.Contains(got, `Fast link dest: "etc/app/conf"`) {
		t.Errorf("link is not a symbolic link to etc/app/conf:\n%s", got)
	}
	if got := debugfs(t, img, "stat /hard"); !strings.Contains(got, "Links: 2") {
		t.Errorf("hard link not kept:\n%s", got)
	}
	if got := debugfs(t, img, "stat /"); !strings.Contains(got, "Type: directory") {
		t.Errorf("root is not a directory:\n%s", got)
	}
	if got := debugfs(t, img, "stats"); !strings.Contains(got, "Filesystem volume name:   data") || !strings.Contains(got, "extent") {
		t.Errorf("label or ext4 features missing:\n%s", got)
	}

	// A given size is used as it is.
	img2 := filepath.Join(outDir, "sized.ext4")
	if err := image.BuildExt4(ctxT(t), src, img2, &image.Ext4Options{SizeMiB: 40}); err != nil {
		t.Fatalf("BuildExt4 40 MiB: %v", err)
	}
	if fi, _ := os.Stat(img2); fi == nil || fi.Size() != 40<<20 {
		t.Errorf("sized image: %v, want 40 MiB", fi)
	}
	fsck(t, img2)
}

func TestBuildExt4BadInput(t *testing.T) {
	guesttest.RequireImageTools(t)
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "big"), bytes.Repeat([]byte{1}, 8<<20), 0o644); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "file")
	os.WriteFile(file, nil, 0o644)
	outDir := t.TempDir()
	out := filepath.Join(outDir, "x.ext4")
	cases := []struct {
		name     string
		dir, out string
		opts     *image.Ext4Options
		is       error
		contains string
	}{
		{"missing dir", filepath.Join(src, "nope"), out, nil, image.ErrInvalidOptions, "no such file"},
		{"dir is a file", file, out, nil, image.ErrInvalidOptions, "not a directory"},
		{"no out", src, "", nil, image.ErrInvalidOptions, "output path is required"},
		{"out is a dir", src, outDir, nil, image.ErrInvalidOptions, "is a directory"},
		{"negative size", src, out, &image.Ext4Options{SizeMiB: -1}, image.ErrInvalidOptions, "size_mib"},
		{"huge size", src, out, &image.Ext4Options{SizeMiB: image.MaxSizeMiB + 1}, image.ErrInvalidOptions, "size_mib"},
		{"long label", src, out, &image.Ext4Options{Label: strings.Repeat("l", 17)}, image.ErrInvalidOptions, "label"},
		{"no mke2fs", src, out, &image.Ext4Options{Mke2fs: "/nonexistent/mke2fs"}, image.ErrToolNotFound, "install e2fsprogs"},
		{"too small", src, out, &image.Ext4Options{SizeMiB: 4}, nil, "mke2fs"},
	}
	for _, c := range cases {
		err := image.BuildExt4(ctxT(t), c.dir, c.out, c.opts)
		if err == nil || (c.is != nil && !errors.Is(err, c.is)) || !strings.Contains(err.Error(), c.contains) {
			t.Errorf("%s: BuildExt4 = %v, want %v containing %q", c.name, err, c.is, c.contains)
		}
	}
	// A cancelled build leaves nothing.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := image.BuildExt4(ctx, src, out, nil); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled BuildExt4 = %v, want context.Canceled", err)
	}
	noLeftovers(t, outDir)
}

func TestBuildRootFS(t *testing.T) {
	guesttest.RequireImageTools(t)
	agentBin := guesttest.Agent(t)
	extra := t.TempDir()
	if err := os.MkdirAll(filepath.Join(extra, "opt", "app"), 0o755); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(extra, "opt", "app", "data"), []byte("payload"), 0o600)
	os.WriteFile(filepath.Join(extra, "etc-hostname"), []byte("x"), 0o644)
	os.Symlink("/etc/passwd", filepath.Join(extra, "etc-link"))
	motd := filepath.Join(t.TempDir(), "motd")
	os.WriteFile(motd, []byte("hello guest\n"), 0o644)

	outDir := t.TempDir()
	img := filepath.Join(outDir, "rootfs.ext4")
	err := image.BuildRootFS(ctxT(t), image.RootFSOptions{
		Agent:    agentBin,
		Dir:      extra,
		Files:    map[string]string{"/etc/motd": motd},
		Hostname: "guest1",
	}, img)
	if err != nil {
		t.Fatalf("BuildRootFS: %v", err)
	}
	fsck(t, img)
	noLeftovers(t, outDir, "rootfs.ext4")
	agentSize, _ := os.Stat(agentBin)
	if l := lsLine(t, img, "/sbin", "init"); !strings.Contains(l, "100755") || !strings.Contains(l, " "+itoa(agentSize.Size())+" ") {
		t.Errorf("/sbin/init: %s (want mode 100755 and %d bytes, the agent)", l, agentSize.Size())
	}
	if got := debugfs(t, img, "stat /init"); !strings.Contains(got, `Fast link dest: "/sbin/init"`) {
		t.Errorf("/init is not a link to /sbin/init:\n%s", got)
	}
	if l := lsLine(t, img, "/bin", "busybox"); !strings.Contains(l, "100755") {
		t.Errorf("/bin/busybox: %s", l)
	}
	if got := debugfs(t, img, "stat /bin/sh"); !strings.Contains(got, `Fast link dest: "/bin/busybox"`) {
		t.Errorf("/bin/sh is not a busybox applet link:\n%s", got)
	}
	for _, d := range []string{"proc", "sys", "dev", "tmp", "run"} {
		if l := lsLine(t, img, "/", d); !strings.Contains(l, " 40") {
			t.Errorf("/%s is not a directory: %s", d, l)
		}
	}
	if l := lsLine(t, img, "/", "tmp"); !strings.Contains(l, "41777") {
		t.Errorf("/tmp mode: %s, want 41777", l)
	}
	if got := debugfs(t, img, "cat /etc/hostname"); got != "guest1\n" {
		t.Errorf("/etc/hostname = %q", got)
	}
	if got := debugfs(t, img, "cat /etc/motd"); got != "hello guest\n" {
		t.Errorf("/etc/motd = %q", got)
	}
	if got := debugfs(t, img, "cat /opt/app/data"); got != "payload" {
		t.Errorf("/opt/app/data = %q", got)
	}
	if l := lsLine(t, img, "/opt/app", "data"); !strings.Contains(l, "100600") {
		t.Errorf("/opt/app/data mode: %s", l)
	}
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }

func TestBuildRootFSBadInput(t *testing.T) {
	guesttest.RequireImageTools(t)
	agentBin := guesttest.Agent(t)
	dynamic, err := exec.LookPath("ls") // a dynamically linked program
	if err != nil {
		t.Fatal(err)
	}
	notELF := filepath.Join(t.TempDir(), "script")
	os.WriteFile(notELF, []byte("#!/bin/sh\n"), 0o755)
	fifoDir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(fifoDir, "pipe"), 0o644); err != nil {
		t.Fatal(err)
	}
	outDir := t.TempDir()
	out := filepath.Join(outDir, "r.ext4")
	cases := []struct {
		name     string
		opts     image.RootFSOptions
		is       error
		contains string
	}{
		{"no agent", image.RootFSOptions{}, image.ErrInvalidOptions, "agent: the mvm-agent binary is required"},
		{"missing agent", image.RootFSOptions{Agent: "/nonexistent/agent"}, image.ErrInvalidOptions, "no such file"},
		{"dynamic agent", image.RootFSOptions{Agent: dynamic}, image.ErrInvalidOptions, "dynamically linked"},
		{"script agent", image.RootFSOptions{Agent: notELF}, image.ErrInvalidOptions, "not an ELF"},
		{"dynamic busybox", image.RootFSOptions{Agent: agentBin, Busybox: dynamic}, image.ErrInvalidOptions, "install busybox-static"},
		{"both busybox settings", image.RootFSOptions{Agent: agentBin, Busybox: "/bin/busybox", NoBusybox: true}, image.ErrInvalidOptions, "no_busybox"},
		{"relative file", image.RootFSOptions{Agent: agentBin, Files: map[string]string{"etc/x": notELF}}, image.ErrInvalidOptions, "absolute"},
		{"root as file", image.RootFSOptions{Agent: agentBin, Files: map[string]string{"/": notELF}}, image.ErrInvalidOptions, "absolute"},
		{"missing file", image.RootFSOptions{Agent: agentBin, Files: map[string]string{"/x": "/nonexistent"}}, image.ErrInvalidOptions, "files[/x]"},
		{"bad hostname", image.RootFSOptions{Agent: agentBin, Hostname: "a b"}, image.ErrInvalidOptions, "hostname"},
		{"fifo in dir", image.RootFSOptions{Agent: agentBin, Dir: fifoDir}, image.ErrInvalidOptions, "only directories"},
		{"dir missing", image.RootFSOptions{Agent: agentBin, Dir: "/nonexistent"}, image.ErrInvalidOptions, "dir"},
	}
	for _, c := range cases {
		err := image.BuildRootFS(ctxT(t), c.opts, out)
		if !errors.Is(err, c.is) || !strings.Contains(err.Error(), c.contains) {
			t.Errorf("%s: BuildRootFS = %v, want %v containing %q", c.name, err, c.is, c.contains)
		}
	}
	noLeftovers(t, outDir)

	// Without busybox the image holds the agent alone.
	if err := image.BuildRootFS(ctxT(t), image.RootFSOptions{Agent: agentBin, NoBusybox: true}, out); err != nil {
		t.Fatalf("BuildRootFS without busybox: %v", err)
	}
	if got := debugfs(t, out, "ls /bin"); strings.Contains(got, "busybox") {
		t.Errorf("busybox in an image built with NoBusybox:\n%s", got)
	}
}
