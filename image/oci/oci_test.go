package oci_test

import (
	"archive/tar"
	"bytes"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/image/oci"
	"github.com/mvm-dev/microvm/internal/guesttest"
)

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func debugfs(t *testing.T, img, req string) string {
	t.Helper()
	out, err := exec.Command(guesttest.Tool("debugfs"), "-R", req, img).Output()
	if err != nil {
		t.Fatalf("debugfs -R %q: %v", req, err)
	}
	return string(out)
}

func fsck(t *testing.T, img string) {
	t.Helper()
	if out, err := exec.Command(guesttest.Tool("e2fsck"), "-fn", img).CombinedOutput(); err != nil {
		t.Fatalf("e2fsck -fn: %v\n%s", err, out)
	}
}

type ent struct {
	name, body, link string
	typ              byte
	mode             int64
	uid              int
	xattrs           map[string]string
}

func layer(t *testing.T, ents ...ent) v1.Layer {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.uid, Linkname: e.link, Size: int64(len(e.body)), ModTime: time.Unix(1700000000, 0)}
		if h.Typeflag == 0 {
			h.Typeflag = tar.TypeReg
		}
		if h.Mode == 0 {
			h.Mode = 0o644
			if h.Typeflag == tar.TypeDir {
				h.Mode = 0o755
			}
		}
		if h.Typeflag != tar.TypeReg {
			h.Size = 0
		}
		if len(e.xattrs) > 0 {
			h.PAXRecords = map[string]string{}
			for k, v := range e.xattrs {
				h.PAXRecords["SCHILY.xattr."+k] = v
			}
			h.Format = tar.FormatPAX
		}
		if err := tw.WriteHeader(h); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(e.body))
	}
	tw.Close()
	b := buf.Bytes()
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(b)), nil })
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// twoLayers is the image of the issue: two layers, a whiteout, an opaque
// directory, a symlink, a hard link, a setuid file and an xattr.
func twoLayers(t *testing.T) v1.Image {
	l1 := layer(t,
		ent{name: "etc/", typ: tar.TypeDir},
		ent{name: "etc/os-release", body: "ID=test\n"},
		ent{name: "etc/gone", body: "deleted by layer 2"},
		ent{name: "opq/", typ: tar.TypeDir},
		ent{name: "opq/old", body: "hidden by the opaque whiteout"},
		ent{name: "usr/bin/", typ: tar.TypeDir},
		ent{name: "usr/bin/tool", body: "v1", mode: 0o755},
	)
	l2 := layer(t,
		ent{name: "etc/.wh.gone"},
		ent{name: "nodir/.wh.nothing"},
		ent{name: "opq/", typ: tar.TypeDir, mode: 0o750},
		ent{name: "opq/new", body: "kept"},
		ent{name: "opq/.wh..wh..opq"},
		ent{name: "usr/bin/tool", body: "v2", mode: 0o4755},
		ent{name: "usr/bin/tool-link", typ: tar.TypeLink, link: "usr/bin/tool"},
		ent{name: "bin", typ: tar.TypeSymlink, link: "usr/bin", mode: 0o777},
		ent{name: "home/user/", typ: tar.TypeDir, mode: 0o700, uid: 1000},
		ent{name: "home/user/ping", body: "p", mode: 0o755, uid: 1000, xattrs: map[string]string{"user.note": "xattr kept"}},
	)
	img, err := mutate.AppendLayers(empty.Image, l1, l2)
	if err != nil {
		t.Fatal(err)
	}
	cfg, _ := img.ConfigFile()
	cfg = cfg.DeepCopy()
	cfg.OS, cfg.Architecture = "linux", runtime.GOARCH
	img, err = mutate.ConfigFile(img, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return img
}

func writeLayout(t *testing.T, img v1.Image) string {
	dir := t.TempDir()
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.AppendImage(img, layout.WithPlatform(v1.Platform{OS: "linux", Architecture: runtime.GOARCH})); err != nil {
		t.Fatal(err)
	}
	return dir
}

func writeArchive(t *testing.T, img v1.Image) string {
	p := filepath.Join(t.TempDir(), "image.tar")
	tag, _ := name.NewTag("mvm.test/sample:1")
	if err := tarball.WriteToFile(p, tag, img); err != nil {
		t.Fatal(err)
	}
	return p
}

func checkTwoLayers(t *testing.T, img string) {
	t.Helper()
	fsck(t, img)
	if got := debugfs(t, img, "cat /etc/os-release"); got != "ID=test\n" {
		t.Errorf("/etc/os-release = %q", got)
	}
	if got := debugfs(t, img, "ls /etc"); strings.Contains(got, "gone") || strings.Contains(got, ".wh.") {
		t.Errorf("whiteout not applied: %s", got)
	}
	if got := debugfs(t, img, "ls /"); strings.Contains(got, "nodir") {
		t.Errorf("a whiteout under a missing directory created it: %s", got)
	}
	if got := debugfs(t, img, "ls /opq"); strings.Contains(got, "old") || !strings.Contains(got, "new") || strings.Contains(got, ".wh.") {
		t.Errorf("opaque directory: %s", got)
	}
	if st := debugfs(t, img, "stat /opq"); !strings.Contains(st, "Mode:  0750") {
		t.Errorf("/opq mode:\n%s", st)
	}
	if got := debugfs(t, img, "cat /usr/bin/tool"); got != "v2" {
		t.Errorf("/usr/bin/tool = %q", got)
	}
	if st := debugfs(t, img, "stat /usr/bin/tool"); !strings.Contains(st, "Mode:  04755") || !strings.Contains(st, "Links: 2") {
		t.Errorf("/usr/bin/tool (setuid, hard linked):\n%s", st)
	}
	if st := debugfs(t, img, "stat /bin"); !strings.Contains(st, `Fast link dest: "usr/bin"`) {
		t.Errorf("/bin:\n%s", st)
	}
	if st := debugfs(t, img, "stat /home/user/ping"); !strings.Contains(st, "User:  1000") {
		t.Errorf("owner:\n%s", st)
	}
	if ea := debugfs(t, img, "ea_list /home/user/ping"); !strings.Contains(ea, "user.note") || !strings.Contains(ea, "xattr kept") {
		t.Errorf("xattr:\n%s", ea)
	}
}

func TestBuildOCI(t *testing.T) {
	guesttest.RequireImageTools(t)
	img := twoLayers(t)
	want, _ := img.Digest()
	for _, tc := range []struct {
		kind string
		src  string
	}{{"oci-layout", writeLayout(t, img)}, {"docker-archive", writeArchive(t, img)}} {
		t.Run(tc.kind, func(t *testing.T) {
			outDir := t.TempDir()
			out := filepath.Join(outDir, "rootfs.ext4")
			info, err := oci.Build(ctxT(t), tc.src, out, oci.Options{}, image.BuildOptions{})
			if err != nil {
				t.Fatalf("Build: %v", err)
			}
			if info.Kind != tc.kind || info.Layers != 2 || info.Digest == "" {
				t.Errorf("info = %+v", info)
			}
			if tc.kind == "oci-layout" && info.Digest != want.String() {
				t.Errorf("digest %s, want %s", info.Digest, want)
			}
			checkTwoLayers(t, out)
			if ents, _ := os.ReadDir(outDir); len(ents) != 1 {
				t.Errorf("left beside the image: %v", ents)
			}
		})
	}
}

func TestBuildOCIAgent(t *testing.T) {
	guesttest.RequireImageTools(t)
	agent := guesttest.Agent(t)
	out := filepath.Join(t.TempDir(), "rootfs.ext4")
	if _, err := oci.Build(ctxT(t), writeLayout(t, twoLayers(t)), out, oci.Options{}, image.BuildOptions{Agent: agent}); err != nil {
		t.Fatal(err)
	}
	fsck(t, out)
	if st := debugfs(t, out, "stat /sbin/init"); !strings.Contains(st, "Mode:  0755") || !strings.Contains(st, "Type: regular") {
		t.Errorf("/sbin/init:\n%s", st)
	}
}

func TestBuildOCIBad(t *testing.T) {
	guesttest.RequireImageTools(t)
	img := twoLayers(t)
	layers, _ := img.Layers()
	d2, _ := layers[1].Digest()
	blob := func(dir string, h v1.Hash) string { return filepath.Join(dir, "blobs", h.Algorithm, h.Hex) }

	missing := writeLayout(t, img)
	os.Remove(blob(missing, d2))

	corrupt := writeLayout(t, img)
	b, _ := os.ReadFile(blob(corrupt, d2))
	b[len(b)/2] ^= 0xff
	os.WriteFile(blob(corrupt, d2), b, 0o644)

	// A layer swapped for another valid gzip tar: diff_id mismatch.
	swapped := writeLayout(t, img)
	d1, _ := layers[0].Digest()
	b1, _ := os.ReadFile(blob(swapped, d1))
	os.WriteFile(blob(swapped, d2), b1, 0o644)

	hostile, err := mutate.AppendLayers(empty.Image, layer(t, ent{name: "evil", typ: tar.TypeSymlink, link: "/etc"}), layer(t, ent{name: "evil/passwd", body: "root::0:0::/:/bin/sh"}))
	if err != nil {
		t.Fatal(err)
	}
	notLayout := t.TempDir()
	garbage := filepath.Join(t.TempDir(), "garbage.tar")
	os.WriteFile(garbage, []byte("not a tar at all"), 0o644)

	for _, tc := range []struct {
		name, src string
		opts      oci.Options
		is        error
		contains  string
	}{
		{"missing layer", missing, oci.Options{}, image.ErrBadArchive, d2.Hex[:12]},
		{"corrupt layer", corrupt, oci.Options{}, image.ErrBadArchive, "layer 2"},
		{"swapped layer", swapped, oci.Options{}, image.ErrBadArchive, "diff_id"},
		{"write through symlink across layers", writeArchive(t, hostile), oci.Options{}, image.ErrUnsafeEntry, "symbolic link"},
		{"not a layout", notLayout, oci.Options{}, image.ErrBadArchive, "oci-layout"},
		{"not an archive", garbage, oci.Options{}, image.ErrBadArchive, "docker-save"},
		{"other platform", writeLayout(t, img), oci.Options{Platform: "linux/s390x"}, oci.ErrNoImage, "s390x"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			outDir := t.TempDir()
			_, err := oci.Build(ctxT(t), tc.src, filepath.Join(outDir, "x.ext4"), tc.opts, image.BuildOptions{})
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("err = %v; want %v containing %q", err, tc.is, tc.contains)
			}
			if ents, _ := os.ReadDir(outDir); len(ents) != 0 {
				t.Errorf("left behind: %v", ents)
			}
		})
	}
}

// BenchmarkBuildOCI builds an ext4 image from an OCI layout of three
// gzip layers holding 96 MiB of files (32 files of 1 MiB per layer);
// MB/s is of file content.
func BenchmarkBuildOCI(b *testing.B) {
	guesttest.RequireImageTools(b)
	var ls []v1.Layer
	chunk := make([]byte, 1<<20)
	for i := range chunk {
		chunk[i] = byte(i*7 + i>>9) // compressible but not trivially
	}
	for l := range 3 {
		var buf bytes.Buffer
		tw := tar.NewWriter(&buf)
		for f := range 32 {
			tw.WriteHeader(&tar.Header{Name: "data/l" + string(rune('a'+l)) + "/f" + string(rune('a'+f)), Mode: 0o644, Size: int64(len(chunk)), Typeflag: tar.TypeReg})
			tw.Write(chunk)
		}
		tw.Close()
		data := buf.Bytes()
		layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(data)), nil })
		if err != nil {
			b.Fatal(err)
		}
		ls = append(ls, layer)
	}
	img, err := mutate.AppendLayers(empty.Image, ls...)
	if err != nil {
		b.Fatal(err)
	}
	dir := b.TempDir()
	p, err := layout.Write(filepath.Join(dir, "oci"), empty.Index)
	if err != nil {
		b.Fatal(err)
	}
	if err := p.AppendImage(img); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(96 << 20)
	b.ResetTimer()
	for i := range b.N {
		out := filepath.Join(dir, "img"+string(rune('a'+i%26)))
		if _, err := oci.Build(b.Context(), filepath.Join(dir, "oci"), out, oci.Options{}, image.BuildOptions{}); err != nil {
			b.Fatal(err)
		}
		b.StopTimer()
		os.Remove(out)
		b.StartTimer()
	}
}
