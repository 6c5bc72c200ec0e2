//go:build linux

package agent_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	microvm "github.com/mvm-dev/microvm"
	"github.com/mvm-dev/microvm/agent"
)

// bigFileMiB is the size of the file round trip: MVM_AGENT_BIG_MIB, else
// 256 (1024 is the 1 GiB).
func bigFileMiB() int64 {
	if n, err := strconv.ParseInt(os.Getenv("MVM_AGENT_BIG_MIB"), 10, 64); err == nil && n > 0 {
		return n
	}
	return 256
}

// roundTrip writes size pseudo-random bytes to the guest and reads them
// back, comparing checksums.
func roundTrip(t *testing.T, ctx context.Context, ga interface {
	WriteFile(context.Context, string, io.Reader, *microvm.WriteFileOptions) error
	ReadFile(context.Context, string, io.Writer) (microvm.FileInfo, error)
}, path string, size int64) {
	t.Helper()
	h := sha256.New()
	src := io.TeeReader(io.LimitReader(rand.NewChaCha8([32]byte{7}), size), h)
	if err := ga.WriteFile(ctx, path, src, &microvm.WriteFileOptions{Mode: 0o600, Size: size}); err != nil {
		t.Fatalf("WriteFile %d bytes: %v", size, err)
	}
	want := h.Sum(nil)
	hw := &hashWriter{h: sha256.New()}
	fi, err := ga.ReadFile(ctx, path, hw)
	if err != nil {
		t.Fatalf("ReadFile: %v", err)
	}
	if fi.Size != size || hw.n != size || !bytes.Equal(hw.h.Sum(nil), want) || fi.Mode != 0o600 {
		t.Fatalf("read back %d bytes (info %+v), want %d with the same sha256 and mode 0600", hw.n, fi, size)
	}
}

func TestFileRoundTripLarge(t *testing.T) {
	ta := startAgent(t, "")
	size := bigFileMiB() << 20
	roundTrip(t, ctx2(t), ta.g, filepath.Join(ta.files, "big.bin"), size)
	// Unknown size (chunked) works the same.
	if err := ta.g.WriteFile(ctx2(t), filepath.Join(ta.files, "chunked"), strings.NewReader("hello"), nil); err != nil {
		t.Fatal(err)
	}
	if b, err := os.ReadFile(filepath.Join(ta.files, "chunked")); err != nil || string(b) != "hello" {
		t.Fatalf("chunked write: %q %v", b, err)
	}
}

func TestWriteFileModeOwnerAtomic(t *testing.T) {
	ta := startAgent(t, "")
	ctx := ctx2(t)
	p := filepath.Join(ta.files, "f")
	uid, gid := 1234, 5678
	if os.Geteuid() != 0 {
		uid, gid = os.Geteuid(), os.Getegid()
	}
	if err := ta.g.WriteFile(ctx, p, strings.NewReader("v1"), &microvm.WriteFileOptions{Mode: 0o640, UID: &uid, GID: &gid, Size: 2}); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	sys := st.Sys().(*syscall.Stat_t)
	if st.Mode().Perm() != 0o640 || int(sys.Uid) != uid || int(sys.Gid) != gid {
		t.Fatalf("mode %v owner %d:%d, want 0640 %d:%d", st.Mode(), sys.Uid, sys.Gid, uid, gid)
	}
	// A body that breaks half-way leaves the old file and no temporary.
	broken := io.MultiReader(strings.NewReader(strings.Repeat("x", 1<<20)), errReader{})
	for _, size := range []int64{-1, 4 << 20} {
		err := ta.g.WriteFile(ctx, p, broken, &microvm.WriteFileOptions{Size: size})
		if err == nil {
			t.Fatalf("WriteFile with a broken reader (size %d) succeeded", size)
		}
		if b, _ := os.ReadFile(p); string(b) != "v1" {
			t.Fatalf("after a broken write the file holds %d bytes, want the old v1", len(b))
		}
		waitNoTemp(t, ta.files)
	}
}

// waitNoTemp checks that only the test's own files are in dir once the
// agent has finished with the failed request.
func waitNoTemp(t *testing.T, dir string) {
	t.Helper()
	for range 500 {
		ents, _ := os.ReadDir(dir)
		left := []string{}
		for _, e := range ents {
			if strings.Contains(e.Name(), ".mvm-") {
				left = append(left, e.Name())
			}
		}
		if len(left) == 0 {
			return
		}
		syscall.Nanosleep(&syscall.Timespec{Nsec: 10e6}, nil)
	}
	t.Fatalf("temporary files left in %s", dir)
}

type errReader struct{}

func (errReader) Read([]byte) (int, error) { return 0, errors.New("source broke") }

func TestFilePathRules(t *testing.T) {
	ta := startAgent(t, "")
	ctx := ctx2(t)
	outside := t.TempDir()
	os.Symlink(outside, filepath.Join(ta.files, "escape"))
	for _, tc := range []struct {
		path string
		want error
	}{
		{"/etc/mvm-agent-test", microvm.ErrPathNotAllowed},
		{filepath.Join(outside, "x"), microvm.ErrPathNotAllowed},
		{filepath.Join(ta.files, "escape", "x"), microvm.ErrPathNotAllowed},
		{filepath.Join(ta.secrets, "x"), microvm.ErrPathNotAllowed},
		{ta.files + "/../x", microvm.ErrInvalidArgument},
		{"relative", microvm.ErrInvalidArgument},
		{"", microvm.ErrInvalidArgument},
		{filepath.Join(ta.files, "no", "dir"), microvm.ErrGuestFileNotFound},
	} {
		err := ta.g.WriteFile(ctx, tc.path, strings.NewReader("x"), nil)
		if !errors.Is(err, tc.want) {
			t.Errorf("WriteFile(%q) = %v, want %v", tc.path, err, tc.want)
		}
		_, err = ta.g.ReadFile(ctx, tc.path, io.Discard)
		if !errors.Is(err, tc.want) {
			t.Errorf("ReadFile(%q) = %v, want %v", tc.path, err, tc.want)
		}
	}
	if ents, _ := os.ReadDir(outside); len(ents) != 0 {
		t.Errorf("a file was written outside the root: %v", ents)
	}
	if _, err := ta.g.ReadFile(ctx, filepath.Join(ta.files, "absent"), io.Discard); !errors.Is(err, microvm.ErrGuestFileNotFound) {
		t.Errorf("ReadFile of a missing file = %v", err)
	}
}

func TestWriteFileNoSpace(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("mounting a small tmpfs needs root")
	}
	ta := startAgent(t, "")
	dir := filepath.Join(ta.files, "small")
	os.Mkdir(dir, 0o755)
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("mount tmpfs: %v", err)
	}
	defer syscall.Unmount(dir, syscall.MNT_DETACH)
	for _, size := range []int64{4 << 20, -1} {
		err := ta.g.WriteFile(ctx2(t), filepath.Join(dir, "big"), io.LimitReader(rand.NewChaCha8([32]byte{}), 4<<20), &microvm.WriteFileOptions{Size: size})
		if !errors.Is(err, microvm.ErrNoSpace) {
			t.Fatalf("WriteFile of 4 MiB into 1 MiB (size %d) = %v, want ErrNoSpace", size, err)
		}
		waitNoTemp(t, dir)
		if _, err := os.Stat(filepath.Join(dir, "big")); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("a half-written file is left: %v", err)
		}
	}
}

func TestSecrets(t *testing.T) {
	ta := startAgent(t, "")
	ctx := ctx2(t)
	value := []byte("s3cr3t-value-" + strconv.Itoa(os.Getpid()))
	if err := ta.g.SetSecret(ctx, "db_pass-1", value); err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(filepath.Join(ta.secrets, "db_pass-1"))
	if err != nil || st.Mode().Perm() != 0o400 {
		t.Fatalf("secret file: %v %v, want mode 0400", st, err)
	}
	if dst, err := os.Stat(ta.secrets); err != nil || dst.Mode().Perm() != 0o700 {
		t.Fatalf("secrets dir: %v %v, want 0700", dst, err)
	}
	out, _, _ := run(t, ta.g, microvm.ExecRequest{Args: []string{"sh", "-c", `cat "$MVM_SECRETS_DIR/db_pass-1"`}})
	if out != string(value) {
		t.Fatalf("exec read the secret as %q", out)
	}
	for _, bad := range []string{"", "a/b", "..", "a b", "a.b", "é", strings.Repeat("a", 129)} {
		if err := ta.g.SetSecret(ctx, bad, []byte("x")); !errors.Is(err, microvm.ErrInvalidArgument) {
			t.Errorf("SetSecret(%q) = %v, want ErrInvalidArgument", bad, err)
		}
	}
	if strings.Contains(ta.logText(), string(value)) {
		t.Fatal("the agent logged the secret's value")
	}
	// The secrets directory must be tmpfs.
	disk := startAgentWith(t, func(s *agent.Service) { s.SecretsDir = filepath.Join(t.TempDir(), "disk") })
	err = disk.g.SetSecret(ctx, "x", value)
	if err == nil || !strings.Contains(err.Error(), "not on tmpfs") {
		t.Fatalf("secret on a disk directory: %v", err)
	}
	if ents, _ := os.ReadDir(disk.svc.SecretsDir); len(ents) != 0 {
		t.Fatalf("something was written to the disk directory: %v", ents)
	}
}
