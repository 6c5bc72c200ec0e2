package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mvm-dev/microvm/image/store"
	"github.com/mvm-dev/microvm/internal/guesttest"
)

func tarOf(t *testing.T, files map[string]string) []byte {
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for name, body := range files {
		tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: int64(len(body)), Typeflag: tar.TypeReg})
		tw.Write([]byte(body))
	}
	tw.Close()
	return buf.Bytes()
}

func TestCLIImages(t *testing.T) {
	guesttest.RequireImageTools(t)
	c := newCLI(t)
	work := t.TempDir()

	dir := filepath.Join(work, "tree")
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc", "motd"), []byte("from dir\n"), 0o644)
	tarPath := filepath.Join(work, "root.tar")
	os.WriteFile(tarPath, tarOf(t, map[string]string{"etc/motd": "from tar\n"}), 0o644)

	b := tarOf(t, map[string]string{"etc/motd": "from oci\n"})
	l, err := tarball.LayerFromReader(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	img, _ := mutate.AppendLayers(empty.Image, l)
	ociDir := filepath.Join(work, "oci")
	p, _ := layout.Write(ociDir, empty.Index)
	if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH})); err != nil {
		t.Fatal(err)
	}
	digest, _ := img.Digest()

	c.ok("image", "build", "d", "--from-dir", dir)
	c.ok("image", "build", "t", "--from-tar", tarPath, "--size", "64M")
	out := c.ok("image", "build", "o", "--from-oci", ociDir, "--agent", "--agent-bin", guesttest.Agent(t))
	if !strings.Contains(out, "oci:"+ociDir) {
		t.Errorf("build output: %s", out)
	}

	var imgs []store.Image
	if err := json.Unmarshal([]byte(c.ok("image", "ls", "-o", "json")), &imgs); err != nil {
		t.Fatal(err)
	}
	if len(imgs) != 3 || imgs[0].Name != "d" || imgs[1].Name != "o" || imgs[2].Name != "t" {
		t.Fatalf("image ls: %+v", imgs)
	}
	if imgs[2].SizeBytes != 64<<20 || imgs[1].Source.Digest != digest.String() || imgs[1].Builder != "mvm image build --from-oci --agent" {
		t.Errorf("manifests: %+v", imgs)
	}
	for name, want := range map[string]string{"d": "from dir\n", "t": "from tar\n", "o": "from oci\n"} {
		var v struct {
			store.Image
			Users []string `json:"users"`
		}
		if err := json.Unmarshal([]byte(c.ok("image", "inspect", name, "--verify")), &v); err != nil {
			t.Fatal(err)
		}
		got, err := exec.Command(guesttest.Tool("debugfs"), "-R", "cat /etc/motd", v.Path).Output()
		if err != nil || string(got) != want {
			t.Errorf("image %s /etc/motd = %q, %v", name, got, err)
		}
		if v.Users == nil || len(v.Users) != 0 {
			t.Errorf("users: %v", v.Users)
		}
	}
	if code, _, errs := c.run("image", "build", "d", "--from-dir", dir); code != 1 || !strings.Contains(errs, "already exists") {
		t.Errorf("duplicate build: %d %s", code, errs)
	}

	// An image in use is not removed unless forced.
	st, err := store.Open(filepath.Join(c.stateDir, "images"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Use("t", "vm-1"); err != nil {
		t.Fatal(err)
	}
	if code, _, errs := c.run("image", "rm", "t"); code != 1 || !strings.Contains(errs, "used by vm-1 (remove them first, or use --force): in use") ||
		strings.Contains(errs, "image store") {
		t.Errorf("rm in use: %d %s", code, errs)
	}
	c.ok("image", "rm", "--force", "t")
	c.ok("image", "rm", "d", "o")
	if out := c.ok("image", "ls"); strings.Count(out, "\n") != 1 {
		t.Errorf("image ls after rm:\n%s", out)
	}
	if code, _, errs := c.run("image", "inspect", "d"); code != 1 || !strings.Contains(errs, "not found") {
		t.Errorf("inspect removed: %d %s", code, errs)
	}

	// Usage errors exit 2 and build nothing.
	for _, args := range [][]string{
		{"image", "build", "x"},
		{"image", "build", "x", "--from-dir", dir, "--from-tar", tarPath},
		{"image", "build", "x", "--from-dir", dir, "--size", "1.5G"},
		{"image", "build", "x", "--from-dir", dir, "--size", "-1M"},
		{"image", "build", "../x", "--from-dir", dir},
		{"image", "build", "x", "--from-dir", filepath.Join(work, "missing")},
		{"image", "build", "x", "--from-dir", dir, "--platform", "linux/arm64"},
		{"image", "rm"},
	} {
		if code, _, errs := c.run(args...); code != 2 {
			t.Errorf("mvm %v: exit %d, want 2: %s", args, code, errs)
		}
	}
	// A hostile tarball fails (exit 1), leaving nothing.
	evil := filepath.Join(work, "evil.tar")
	os.WriteFile(evil, tarOf(t, map[string]string{"../../escape": "x"}), 0o644)
	if code, _, errs := c.run("image", "build", "evil", "--from-tar", evil); code != 1 || !strings.Contains(errs, `".."`) {
		t.Errorf("hostile tar: %d %s", code, errs)
	}
	ents, _ := os.ReadDir(filepath.Join(c.stateDir, "images"))
	for _, e := range ents {
		if e.Name() != ".lock" {
			t.Errorf("left in the image store: %s", e.Name())
		}
	}
}

// TestCLIImageBuildKilled SIGKILLs `mvm image build` while it unpacks a
// large tarball: the image never appears, the name stays free, and the
// next command sweeps the half-built files.
func TestCLIImageBuildKilled(t *testing.T) {
	guesttest.RequireImageTools(t)
	c := newCLI(t)
	work := t.TempDir()
	// 1 GiB of zeros, a few MiB gzipped: unpacking takes seconds.
	var buf bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	tw := tar.NewWriter(zw)
	tw.WriteHeader(&tar.Header{Name: "big", Mode: 0o644, Size: 1 << 30, Typeflag: tar.TypeReg})
	zero := make([]byte, 1<<20)
	for range 1 << 10 {
		tw.Write(zero)
	}
	tw.Close()
	zw.Close()
	src := filepath.Join(work, "big.tar.gz")
	os.WriteFile(src, buf.Bytes(), 0o644)

	cmd := exec.Command(c.bin, "--state-dir", c.stateDir, "image", "build", "big", "--from-tar", src)
	cmd.Env = c.env
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	store := filepath.Join(c.stateDir, "images")
	staged := func() bool {
		m, _ := filepath.Glob(filepath.Join(store, ".pending-big", ".rootfs.ext4.stage-*", "root", "big"))
		return len(m) > 0
	}
	for deadline := time.Now().Add(time.Minute); !staged() && time.Now().Before(deadline); {
		time.Sleep(5 * time.Millisecond)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	err := cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Fatalf("build was not killed mid-way: %v", err)
	}
	if out := c.ok("image", "ls"); strings.Contains(out, "big") {
		t.Errorf("a killed build is listed:\n%s", out)
	}
	ents, _ := os.ReadDir(store)
	for _, e := range ents {
		if e.Name() != ".lock" {
			t.Errorf("left in the image store after the next command: %s", e.Name())
		}
	}
	small := filepath.Join(work, "small.tar")
	os.WriteFile(small, tarOf(t, map[string]string{"x": "y"}), 0o644)
	c.ok("image", "build", "big", "--from-tar", small)
}

// TestCLICreateFromImage: `mvm create --image NAME --disk-size SIZE` runs
// the VM from its own grown clone of the image, which is then in use
// (image rm refused) until `mvm rm` releases it.
func TestCLICreateFromImage(t *testing.T) {
	guesttest.RequireImageTools(t)
	c := newCLI(t)
	work := t.TempDir()
	dir := filepath.Join(work, "tree")
	os.MkdirAll(filepath.Join(dir, "etc"), 0o755)
	os.WriteFile(filepath.Join(dir, "etc", "motd"), []byte("from dir\n"), 0o644)
	kernel := filepath.Join(work, "vmlinux")
	os.WriteFile(kernel, []byte("\x7fELF stand-in kernel"), 0o644)
	c.ok("image", "build", "base", "--from-dir", dir, "--size", "16M")

	c.ok("create", "cli-a", "--kernel", kernel, "--image", "base", "--disk-size", "32M", "--memory", "32")
	var vm struct {
		Spec struct {
			RootDrive struct {
				Path      string `json:"path"`
				Image     string `json:"image"`
				SizeBytes int64  `json:"size_bytes"`
			} `json:"root_drive"`
		} `json:"spec"`
	}
	if err := json.Unmarshal([]byte(c.ok("inspect", "cli-a", "-o", "json")), &vm); err != nil {
		t.Fatal(err)
	}
	d := vm.Spec.RootDrive
	if d.Image != "base" || d.SizeBytes != 32<<20 || !strings.HasPrefix(d.Path, filepath.Join(c.stateDir, "vms", "cli-a")+"/") {
		t.Fatalf("root drive of a VM from an image: %+v", d)
	}
	if fi, err := os.Stat(d.Path); err != nil || fi.Size() != 32<<20 {
		t.Errorf("clone: %v, %v; want %d bytes", fi, err, 32<<20)
	}
	got, err := exec.Command(guesttest.Tool("debugfs"), "-R", "cat /etc/motd", d.Path).Output()
	if err != nil || string(got) != "from dir\n" {
		t.Errorf("clone /etc/motd = %q, %v", got, err)
	}
	if code, _, errs := c.run("image", "rm", "base"); code != 1 || !strings.Contains(errs, "used by cli-a") {
		t.Errorf("rm of an image in use: %d %s", code, errs)
	}
	c.ok("rm", "cli-a")
	if _, err := os.Stat(d.Path); err == nil {
		t.Error("clone left after mvm rm")
	}
	c.ok("image", "rm", "base")

	if code, _, errs := c.run("create", "cli-b", "--kernel", kernel, "--image", "gone"); code != 1 || !strings.Contains(errs, `"gone"`) {
		t.Errorf("create from a missing image: %d %s", code, errs)
	}
	for _, args := range [][]string{
		{"create", "cli-b", "--kernel", kernel},
		{"create", "cli-b", "--kernel", kernel, "--rootfs", kernel, "--image", "base"},
		{"create", "cli-b", "--kernel", kernel, "--rootfs", kernel, "--disk-size", "32M"},
		{"create", "cli-b", "--kernel", kernel, "--image", "base", "--disk-size", "1.5M"},
		{"create", "cli-b", "--kernel", kernel, "--image", "../x"},
	} {
		if code, _, errs := c.run(args...); code != 2 {
			t.Errorf("mvm %v: exit %d, want 2: %s", args, code, errs)
		}
	}
}
