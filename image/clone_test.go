package image_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/internal/guesttest"
)

func allocated(t testing.TB, p string) int64 {
	var st syscall.Stat_t
	if err := syscall.Stat(p, &st); err != nil {
		t.Fatal(err)
	}
	return st.Blocks * 512
}

func fileSum(t testing.TB, p string) [32]byte {
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return sha256.Sum256(b)
}

// template builds an ext4 image of sizeMiB holding dataMiB of data.
func template(t testing.TB, sizeMiB, dataMiB int) string {
	t.Helper()
	src := t.TempDir()
	if err := os.WriteFile(filepath.Join(src, "data"), bytes.Repeat([]byte("0123456789abcdef"), dataMiB<<16), 0o644); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(src, "hello"), []byte("hello\n"), 0o644)
	img := filepath.Join(t.TempDir(), "template.ext4")
	if err := image.BuildExt4(ctxT(t.(*testing.T)), src, img, &image.Ext4Options{SizeMiB: sizeMiB}); err != nil {
		t.Fatal(err)
	}
	return img
}

func TestClone(t *testing.T) {
	guesttest.RequireImageTools(t)
	tpl := template(t, 256, 8)
	tplSum := fileSum(t, tpl)
	dir := t.TempDir()
	c1 := filepath.Join(dir, "vm1.ext4")
	m, err := image.Clone(ctxT(t), tpl, c1, image.CloneOptions{})
	if err != nil {
		t.Fatalf("Clone: %v", err)
	}
	// This host's /tmp is ext4 (no reflink): the fallback is taken.
	t.Logf("method %s; template %d bytes, %d allocated; clone %d allocated", m, 256<<20, allocated(t, tpl), allocated(t, c1))
	if m != image.Reflink && m != image.SparseCopy {
		t.Errorf("method %q", m)
	}
	if fileSum(t, c1) != tplSum {
		t.Fatalf("clone differs from the template")
	}
	if a := allocated(t, c1); m == image.SparseCopy && a > allocated(t, tpl)+1<<20 {
		t.Errorf("sparse clone allocates %d bytes, template %d", a, allocated(t, tpl))
	}
	fsck(t, c1)
	// Writing the clone leaves the template alone.
	f, _ := os.OpenFile(c1, os.O_WRONLY, 0)
	f.WriteAt(bytes.Repeat([]byte{0xee}, 1<<20), 100<<20)
	f.Close()
	if fileSum(t, tpl) != tplSum {
		t.Errorf("writing the clone changed the template")
	}

	// A forced copy is a sparse copy.
	c2 := filepath.Join(dir, "vm2.ext4")
	if m, err := image.Clone(ctxT(t), tpl, c2, image.CloneOptions{NoReflink: true}); err != nil || m != image.SparseCopy {
		t.Fatalf("Clone NoReflink: %v %v", m, err)
	}
	if fileSum(t, c2) != tplSum {
		t.Errorf("sparse copy differs")
	}

	// Grown clone: the file system fills the new size and keeps its data.
	c3 := filepath.Join(dir, "vm3.ext4")
	if _, err := image.Clone(ctxT(t), tpl, c3, image.CloneOptions{SizeBytes: 1 << 30}); err != nil {
		t.Fatalf("Clone grow: %v", err)
	}
	if fi, _ := os.Stat(c3); fi.Size() != 1<<30 {
		t.Errorf("grown clone is %d bytes", fi.Size())
	}
	fsck(t, c3)
	if st := debugfs(t, c3, "stats"); !strings.Contains(st, "Block count:              262144") {
		t.Errorf("file system not grown:\n%s", st)
	}
	if got := debugfs(t, c3, "cat /hello"); got != "hello\n" {
		t.Errorf("grown clone lost /hello: %q", got)
	}

	// Bad requests fail with nothing left behind.
	for _, tc := range []struct {
		name, src, dst string
		opts           image.CloneOptions
		contains       string
	}{
		{"dst exists", tpl, c1, image.CloneOptions{}, "exists"},
		{"shrink", tpl, filepath.Join(dir, "x"), image.CloneOptions{SizeBytes: 128 << 20}, "shrinking"},
		{"unaligned", tpl, filepath.Join(dir, "x"), image.CloneOptions{SizeBytes: 300<<20 + 1}, "multiple of 4096"},
		{"missing src", filepath.Join(dir, "nope"), filepath.Join(dir, "x"), image.CloneOptions{}, "no such file"},
		{"src is a dir", dir, filepath.Join(dir, "x"), image.CloneOptions{}, "not a regular file"},
		{"no resize2fs", tpl, filepath.Join(dir, "x"), image.CloneOptions{SizeBytes: 512 << 20, Resize2fs: "/nonexistent/resize2fs"}, "install e2fsprogs"},
	} {
		_, err := image.Clone(ctxT(t), tc.src, tc.dst, tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.contains) {
			t.Errorf("%s: %v, want an error containing %q", tc.name, err, tc.contains)
		}
	}
	noLeftovers(t, dir, "vm1.ext4", "vm2.ext4", "vm3.ext4")
	if fileSum(t, c1) == tplSum {
		t.Errorf("dst exists: the existing clone was overwritten")
	}
}

// TestClone100 clones 100 VMs' disks from one template of 1 GiB with
// 16 MiB of data: the disk space used stays near what the data takes
// per clone, not 100 GiB.
func TestClone100(t *testing.T) {
	guesttest.RequireImageTools(t)
	tpl := template(t, 1024, 16)
	dir := t.TempDir()
	var total int64
	for i := range 100 {
		c := filepath.Join(dir, fmt.Sprintf("vm%03d.ext4", i))
		if _, err := image.Clone(ctxT(t), tpl, c, image.CloneOptions{}); err != nil {
			t.Fatalf("clone %d: %v", i, err)
		}
		total += allocated(t, c)
	}
	per := allocated(t, tpl)
	t.Logf("100 clones of a 1 GiB template (%d MiB allocated): %d MiB allocated in all", per>>20, total>>20)
	if total > 100*(per+1<<20) {
		t.Errorf("100 clones allocate %d bytes; the template %d", total, per)
	}
	if total > 4<<30 {
		t.Errorf("100 clones allocate %d bytes, far more than their data", total)
	}
	fsck(t, filepath.Join(dir, "vm099.ext4"))
}

func TestSweepClones(t *testing.T) {
	dir := t.TempDir()
	abandoned := filepath.Join(dir, ".vm1.ext4.clone-123")
	live := filepath.Join(dir, ".vm2.ext4.clone-456")
	other := filepath.Join(dir, "vm3.ext4")
	for _, p := range []string{abandoned, live, other} {
		os.WriteFile(p, []byte("x"), 0o600)
	}
	f, err := os.Open(live)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX); err != nil {
		t.Fatal(err)
	}
	n, err := image.SweepClones(dir)
	if err != nil || n != 1 {
		t.Fatalf("SweepClones = %d, %v; want 1", n, err)
	}
	noLeftovers(t, dir, ".vm2.ext4.clone-456", "vm3.ext4")
	if _, err := image.SweepClones(filepath.Join(dir, "nope")); err == nil {
		t.Errorf("sweep of a missing directory succeeded")
	}
}

// BenchmarkClone: one VM's clone of a 1 GiB template with 100 MiB of data.
func BenchmarkClone(b *testing.B) {
	tpl := benchTemplate(b)
	for _, bc := range []struct {
		name string
		opts image.CloneOptions
	}{{"auto", image.CloneOptions{}}, {"sparse-copy", image.CloneOptions{NoReflink: true}}, {"sparse-copy-nosync", image.CloneOptions{NoReflink: true, NoSync: true}}, {"grow-to-2GiB", image.CloneOptions{SizeBytes: 2 << 30}}, {"grow-to-2GiB-nosync", image.CloneOptions{SizeBytes: 2 << 30, NoSync: true}}} {
		b.Run(bc.name, func(b *testing.B) {
			dir := b.TempDir()
			b.ResetTimer()
			for i := range b.N {
				c := filepath.Join(dir, fmt.Sprintf("c%d", i))
				if _, err := image.Clone(b.Context(), tpl, c, bc.opts); err != nil {
					b.Fatal(err)
				}
				b.StopTimer()
				os.Remove(c)
				b.StartTimer()
			}
		})
	}
}

func benchTemplate(b *testing.B) string {
	guesttest.RequireImageTools(b)
	dir := b.TempDir()
	src := filepath.Join(dir, "src")
	os.Mkdir(src, 0o755)
	os.WriteFile(filepath.Join(src, "data"), bytes.Repeat([]byte("0123456789abcdef"), 100<<16), 0o644)
	img := filepath.Join(dir, "template.ext4")
	if err := image.BuildExt4(b.Context(), src, img, &image.Ext4Options{SizeMiB: 1024}); err != nil {
		b.Fatal(err)
	}
	os.RemoveAll(src)
	return img
}

const cloneChildEnv = "MVM_IMAGE_CLONE_CHILD"

// TestCloneKilled SIGKILLs a process in the middle of Clone: nothing
// appears at the destination, and SweepClones removes the partial clone
// (its writer's flock died with it).
func TestCloneKilled(t *testing.T) {
	if dir := os.Getenv(cloneChildEnv); dir != "" {
		image.Clone(ctxT(t), filepath.Join(dir, "src"), filepath.Join(dir, "vm", "disk"), image.CloneOptions{NoReflink: true})
		return
	}
	dir := t.TempDir()
	os.Mkdir(filepath.Join(dir, "vm"), 0o755)
	f, err := os.Create(filepath.Join(dir, "src"))
	if err != nil {
		t.Fatal(err)
	}
	block := bytes.Repeat([]byte("data"), 1<<18)
	for range 512 {
		f.Write(block)
	}
	f.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestCloneKilled$")
	cmd.Env = append(os.Environ(), cloneChildEnv+"="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	vm := filepath.Join(dir, "vm")
	partial := func() bool {
		m, _ := filepath.Glob(filepath.Join(vm, ".disk.clone-*"))
		return len(m) == 1
	}
	for deadline := time.Now().Add(time.Minute); !partial() && time.Now().Before(deadline); {
		time.Sleep(time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("clone was not killed mid-way: %v", err)
	}
	if _, err := os.Lstat(filepath.Join(vm, "disk")); err == nil {
		t.Fatalf("a killed clone appeared at its destination")
	}
	if n, err := image.SweepClones(vm); n != 1 || err != nil {
		t.Errorf("SweepClones = %d, %v; want 1", n, err)
	}
	noLeftovers(t, vm)
}
