package image_test

import (
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/internal/guesttest"
)

const nonRootEnv = "MVM_IMAGE_NONROOT_DIR"

// TestBuildAsNonRoot builds the sample tarball as an unprivileged user
// (as root, the test re-runs itself as nobody): owners, the setuid bit,
// an unreadable directory and security xattrs end up in the image
// through debugfs, not through chown on the staging tree.
func TestBuildAsNonRoot(t *testing.T) {
	guesttest.RequireImageTools(t)
	if dir := os.Getenv(nonRootEnv); dir != "" {
		// The child: unprivileged.
		if os.Geteuid() == 0 {
			t.Fatal("child runs as root")
		}
		err := image.BuildFromTar(ctxT(t), filepath.Join(dir, "in.tar"), filepath.Join(dir, "out", "img.ext4"), image.BuildOptions{})
		if err != nil {
			t.Fatalf("BuildFromTar as uid %d: %v", os.Geteuid(), err)
		}
		return
	}
	dir := t.TempDir()
	os.Chmod(dir, 0o777)
	os.Chmod(filepath.Dir(dir), 0o711) // testing makes it 0700
	os.WriteFile(filepath.Join(dir, "in.tar"), sample(t), 0o644)
	os.Mkdir(filepath.Join(dir, "out"), 0o777)
	os.Chmod(filepath.Join(dir, "out"), 0o777)
	if os.Geteuid() != 0 {
		t.Setenv(nonRootEnv, dir)
		TestBuildAsNonRoot(t)
	} else {
		// The test binary may sit in a directory only root can read.
		bin := filepath.Join(dir, "image.test")
		src, err := os.Open(os.Args[0])
		if err != nil {
			t.Fatal(err)
		}
		dst, _ := os.OpenFile(bin, os.O_WRONLY|os.O_CREATE, 0o755)
		io.Copy(dst, src)
		src.Close()
		dst.Close()
		for d := dir; d != "/"; d = filepath.Dir(d) {
			if fi, err := os.Stat(d); err == nil && fi.Mode().Perm()&0o001 == 0 {
				t.Fatalf("%s is not searchable by others; cannot run the test as nobody", d)
			}
		}
		cmd := exec.Command(bin, "-test.run=^TestBuildAsNonRoot$", "-test.v")
		cmd.Env = append(os.Environ(), nonRootEnv+"="+dir, "HOME="+dir, "GOCACHE="+dir, "TMPDIR="+dir)
		cmd.Dir = dir
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.CombinedOutput()
		if err != nil || !strings.Contains(string(out), "PASS") {
			t.Fatalf("child as nobody: %v\n%s", err, out)
		}
	}
	img := filepath.Join(dir, "out", "img.ext4")
	fi, err := os.Stat(img)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid == 0 && os.Geteuid() == 0 {
		t.Fatalf("the image was written by root, not by the unprivileged child")
	}
	checkSample(t, img)
	noLeftovers(t, filepath.Join(dir, "out"), "img.ext4")
}
