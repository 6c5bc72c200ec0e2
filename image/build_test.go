package image_test

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/image"
	"github.com/mvm-dev/microvm/internal/guesttest"
)

// ent is one tar entry for mkTar.
type ent struct {
	name, body, link string
	typ              byte
	mode             int64
	uid, gid         int
	xattrs           map[string]string
	size             int64 // declared size when body is not all
}

func mkTar(t *testing.T, ents ...ent) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range ents {
		h := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: e.mode, Uid: e.uid, Gid: e.gid, Linkname: e.link,
			ModTime: time.Unix(1700000000, 0), Size: int64(len(e.body))}
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
		if e.size != 0 {
			h.Size = e.size
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
		if h.Typeflag == tar.TypeReg {
			tw.Write([]byte(e.body))
		}
	}
	if len(ents) > 0 && ents[len(ents)-1].size != 0 {
		return buf.Bytes() // truncated on purpose
	}
	tw.Close()
	return buf.Bytes()
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	zw := gzip.NewWriter(&buf)
	zw.Write(b)
	zw.Close()
	return buf.Bytes()
}

// sample is a small tree with every kind of entry kept in images.
func sample(t *testing.T) []byte {
	return mkTar(t,
		ent{name: "./", typ: tar.TypeDir, mode: 0o755},
		ent{name: "etc/", typ: tar.TypeDir},
		ent{name: "etc/conf", body: "key=value\n", mode: 0o640, uid: 1000, gid: 1001},
		ent{name: "usr/bin/su", body: "#!/bin/sh\n", mode: 0o4755},
		ent{name: "usr/bin/hard", typ: tar.TypeLink, link: "usr/bin/su"},
		ent{name: "bin", typ: tar.TypeSymlink, link: "usr/bin", mode: 0o777},
		ent{name: "ping", body: "elf", mode: 0o755, xattrs: map[string]string{"user.mvm": "hello", "security.capability": "\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00"}},
		ent{name: "secret/", typ: tar.TypeDir, mode: 0o500, uid: 7, gid: 8},
		ent{name: "secret/key", body: "k", mode: 0o400, uid: 7, gid: 8},
		ent{name: "pipe", typ: tar.TypeFifo, mode: 0o620},
		ent{name: `etc/my "odd" conf`, body: "spaced", mode: 0o600, uid: 5, gid: 6},
	)
}

// checkSample checks an image built from sample.
func checkSample(t *testing.T, img string) {
	t.Helper()
	fsck(t, img)
	if got := debugfs(t, img, "cat /etc/conf"); got != "key=value\n" {
		t.Errorf("/etc/conf = %q", got)
	}
	st := debugfs(t, img, "stat /etc/conf")
	if !strings.Contains(st, "User:  1000") || !strings.Contains(st, "Group:  1001") || !strings.Contains(st, "Mode:  0640") {
		t.Errorf("/etc/conf owner/mode:\n%s", st)
	}
	if st := debugfs(t, img, "stat /usr/bin/su"); !strings.Contains(st, "Mode:  04755") || !strings.Contains(st, "Links: 2") || !strings.Contains(st, "User:     0") {
		t.Errorf("/usr/bin/su (setuid, two links, root):\n%s", st)
	}
	if st := debugfs(t, img, "stat /bin"); !strings.Contains(st, `Fast link dest: "usr/bin"`) {
		t.Errorf("/bin symlink:\n%s", st)
	}
	ea := debugfs(t, img, "ea_list /ping")
	if !strings.Contains(ea, "user.mvm") || !strings.Contains(ea, "hello") || !strings.Contains(ea, "security.capability") {
		t.Errorf("/ping xattrs:\n%s", ea)
	}
	if st := debugfs(t, img, "stat /secret"); !strings.Contains(st, "Mode:  0500") || !strings.Contains(st, "User:     7") || !strings.Contains(st, "Type: directory") {
		t.Errorf("/secret:\n%s", st)
	}
	if st := debugfs(t, img, "stat /secret/key"); !strings.Contains(st, "Mode:  0400") || !strings.Contains(st, "Group:     8") {
		t.Errorf("/secret/key:\n%s", st)
	}
	if st := debugfs(t, img, `stat "/etc/my ""odd"" conf"`); !strings.Contains(st, "User:     5") || !strings.Contains(st, "Mode:  0600") {
		t.Errorf("/etc/my \"odd\" conf:\n%s", st)
	}
	if st := debugfs(t, img, "stat /pipe"); !strings.Contains(st, "Type: FIFO") || !strings.Contains(st, "Mode:  0620") {
		t.Errorf("/pipe:\n%s", st)
	}
}

func TestBuildFromTar(t *testing.T) {
	guesttest.RequireImageTools(t)
	for _, tc := range []struct {
		name   string
		gzip   bool
		fixups bool
	}{{"tar", false, false}, {"tar.gz", true, false}, {"tar as non-root (debugfs fixups)", false, true}} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.fixups {
				defer image.SetForceFixups(true)()
			}
			b := sample(t)
			if tc.gzip {
				b = gz(b)
			}
			dir := t.TempDir()
			src := filepath.Join(dir, "root.tar")
			os.WriteFile(src, b, 0o644)
			outDir := t.TempDir()
			img := filepath.Join(outDir, "img.ext4")
			if err := image.BuildFromTar(ctxT(t), src, img, image.BuildOptions{}); err != nil {
				t.Fatalf("BuildFromTar: %v", err)
			}
			checkSample(t, img)
			noLeftovers(t, outDir, "img.ext4")
		})
	}
}

func TestBuildFromDirAgent(t *testing.T) {
	guesttest.RequireImageTools(t)
	agent := guesttest.Agent(t)
	src := t.TempDir()
	os.MkdirAll(filepath.Join(src, "usr", "sbin"), 0o755)
	os.Symlink("usr/sbin", filepath.Join(src, "sbin")) // merged /usr
	os.WriteFile(filepath.Join(src, "usr", "sbin", "init"), []byte("systemd"), 0o755)
	os.WriteFile(filepath.Join(src, "hello"), []byte("hi"), 0o600)
	os.WriteFile(filepath.Join(src, ".wh.hello"), []byte("not a whiteout"), 0o644)
	os.Chown(filepath.Join(src, "hello"), 42, 43)
	os.Link(filepath.Join(src, "hello"), filepath.Join(src, "hello2"))
	outDir := t.TempDir()
	img := filepath.Join(outDir, "img.ext4")
	if err := image.BuildFromDir(ctxT(t), src, img, image.BuildOptions{Agent: agent}); err != nil {
		t.Fatalf("BuildFromDir: %v", err)
	}
	fsck(t, img)
	want, _ := os.ReadFile(agent)
	if got := debugfs(t, img, "cat /usr/sbin/init"); got != string(want) {
		t.Errorf("/usr/sbin/init is not the agent (%d bytes, want %d)", len(got), len(want))
	}
	if st := debugfs(t, img, "stat /sbin"); !strings.Contains(st, `Fast link dest: "usr/sbin"`) {
		t.Errorf("/sbin link replaced:\n%s", st)
	}
	if got := debugfs(t, img, "cat /.wh.hello"); got != "not a whiteout" {
		t.Errorf("/.wh.hello of a directory = %q", got)
	}
	if st := debugfs(t, img, "stat /hello"); !strings.Contains(st, "User:    42") || !strings.Contains(st, "Links: 2") {
		t.Errorf("/hello:\n%s", st)
	}
	for _, d := range []string{"proc", "sys", "dev", "run"} {
		if l := lsLine(t, img, "/", d); !strings.Contains(l, "40755") {
			t.Errorf("/%s: %s", d, l)
		}
	}
	if l := lsLine(t, img, "/", "tmp"); !strings.Contains(l, "41777") {
		t.Errorf("/tmp: %s", l)
	}
	if got, _ := os.ReadFile(filepath.Join(src, "usr", "sbin", "init")); string(got) != "systemd" {
		t.Errorf("the source directory was changed: %q", got)
	}
	noLeftovers(t, outDir, "img.ext4")
	// Without the agent the directory goes to mke2fs as it is.
	if err := image.BuildFromDir(ctxT(t), src, img, image.BuildOptions{}); err != nil {
		t.Fatal(err)
	}
	if got := debugfs(t, img, "cat /usr/sbin/init"); got != "systemd" {
		t.Errorf("/usr/sbin/init = %q", got)
	}
	// An agent that is not a static executable is refused.
	if err := image.BuildFromDir(ctxT(t), src, img, image.BuildOptions{Agent: filepath.Join(src, "hello")}); !errors.Is(err, image.ErrInvalidOptions) {
		t.Errorf("bad agent: %v", err)
	}
}

func TestBuildHostileTar(t *testing.T) {
	guesttest.RequireImageTools(t)
	ok := ent{name: "ok", body: "fine"}
	corrupt := gz(sample(t))
	corrupt[len(corrupt)/2] ^= 0xff
	cases := []struct {
		name     string
		data     []byte
		limits   image.Limits
		is       error
		contains string
	}{
		{"dotdot", mkTar(t, ok, ent{name: "../escape", body: "x"}), image.Limits{}, image.ErrUnsafeEntry, `".."`},
		{"nested dotdot", mkTar(t, ent{name: "a/../../escape", body: "x"}), image.Limits{}, image.ErrUnsafeEntry, `".."`},
		{"absolute", mkTar(t, ent{name: "/etc/passwd", body: "x"}), image.Limits{}, image.ErrUnsafeEntry, "absolute"},
		{"symlink then write through", mkTar(t, ent{name: "evil", typ: tar.TypeSymlink, link: "/tmp"}, ent{name: "evil/owned", body: "x"}), image.Limits{}, image.ErrUnsafeEntry, "symbolic link"},
		{"relative symlink escape", mkTar(t, ent{name: "up", typ: tar.TypeSymlink, link: "../../.."}, ent{name: "up/x", body: "x"}), image.Limits{}, image.ErrUnsafeEntry, "symbolic link"},
		{"hard link out", mkTar(t, ent{name: "h", typ: tar.TypeLink, link: "../../etc/shadow"}), image.Limits{}, image.ErrUnsafeEntry, "hard link"},
		{"hard link through symlink", mkTar(t, ent{name: "s", typ: tar.TypeSymlink, link: "/etc"}, ent{name: "h", typ: tar.TypeLink, link: "s/shadow"}), image.Limits{}, image.ErrUnsafeEntry, "symbolic link"},
		{"hard link to missing", mkTar(t, ent{name: "h", typ: tar.TypeLink, link: "nothere"}), image.Limits{}, image.ErrBadArchive, "nothere"},
		{"char device", mkTar(t, ent{name: "dev/null", typ: tar.TypeChar}), image.Limits{}, image.ErrUnsafeEntry, "device node"},
		{"block device", mkTar(t, ent{name: "dev/sda", typ: tar.TypeBlock}), image.Limits{}, image.ErrUnsafeEntry, "device node"},
		{"huge declared size", mkTar(t, ok, ent{name: "huge", body: "x", size: 1 << 40}), image.Limits{}, image.ErrUnsafeEntry, "declares 1099511627776 bytes"},
		{"over the byte limit", mkTar(t, ent{name: "a", body: strings.Repeat("a", 600)}, ent{name: "b", body: strings.Repeat("b", 600)}), image.Limits{MaxBytes: 1000}, image.ErrUnsafeEntry, "over the limit"},
		{"too many entries", mkTar(t, ok, ok, ok), image.Limits{MaxEntries: 2}, image.ErrUnsafeEntry, "more than 2 entries"},
		{"truncated", mkTar(t, ok, ent{name: "cut", body: "abc", size: 100}), image.Limits{}, image.ErrBadArchive, "cut"},
		{"corrupt gzip", corrupt, image.Limits{}, image.ErrBadArchive, ""},
		{"gzip header only", []byte{0x1f, 0x8b, 8, 0}, image.Limits{}, image.ErrBadArchive, "gzip"},
		{"not a tar", bytes.Repeat([]byte("garbage!"), 200), image.Limits{}, image.ErrBadArchive, "tar"},
		{"root not a dir", mkTar(t, ent{name: ".", body: "x"}), image.Limits{}, image.ErrUnsafeEntry, "root"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			src := filepath.Join(dir, "in.tar")
			os.WriteFile(src, tc.data, 0o644)
			outDir := t.TempDir()
			img := filepath.Join(outDir, "img.ext4")
			err := image.BuildFromTar(ctxT(t), src, img, image.BuildOptions{Limits: tc.limits})
			if !errors.Is(err, tc.is) || !strings.Contains(err.Error(), tc.contains) {
				t.Fatalf("err = %v; want %v containing %q", err, tc.is, tc.contains)
			}
			noLeftovers(t, outDir)
			if _, err := os.Lstat("/tmp/owned"); err == nil {
				t.Errorf("/tmp/owned written on the host")
			}
		})
	}
	// A given size smaller than the content fails cleanly too.
	src := filepath.Join(t.TempDir(), "big.tar")
	os.WriteFile(src, mkTar(t, ent{name: "big", body: strings.Repeat("x", 8<<20)}), 0o644)
	outDir := t.TempDir()
	if err := image.BuildFromTar(ctxT(t), src, filepath.Join(outDir, "x"), image.BuildOptions{SizeMiB: 4}); err == nil {
		t.Errorf("8 MiB into 4 MiB succeeded")
	}
	noLeftovers(t, outDir)
}
