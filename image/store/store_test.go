package store_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/image/store"
)

func writeBytes(b []byte) store.BuildFunc {
	return func(ctx context.Context, path string) error { return os.WriteFile(path, b, 0o644) }
}

func names(t *testing.T, s *store.Store) []string {
	t.Helper()
	imgs, err := s.List()
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	var out []string
	for _, i := range imgs {
		out = append(out, i.Name)
	}
	return out
}

// hidden returns the names in dir starting with '.' other than the lock.
func hidden(t *testing.T, dir string) []string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") && e.Name() != ".lock" {
			out = append(out, e.Name())
		}
	}
	return out
}

func TestCreateGetListRemove(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(filepath.Join(t.TempDir(), "images"))
	if err != nil {
		t.Fatal(err)
	}
	content := bytes.Repeat([]byte("ext4"), 1000)
	src := &store.Source{Kind: "dir", Path: "/src"}
	img, err := s.Create(ctx, "base", src, "test", writeBytes(content))
	if err != nil {
		t.Fatalf("Create: %v", err)
	}
	// sha256 of 4000 bytes of "ext4" repeated, computed independently
	want := fmt.Sprintf("%x", sha256Sum(content))
	if img.SHA256 != want || img.SizeBytes != 4000 || img.FormatVersion != store.FormatVersion || img.Source != *src || img.Builder != "test" || img.Created.IsZero() {
		t.Errorf("manifest: %+v (want sha %s, 4000 bytes)", img.Manifest, want)
	}
	got, err := os.ReadFile(img.Path)
	if err != nil || !bytes.Equal(got, content) {
		t.Fatalf("image file: %v", err)
	}
	if fi, _ := os.Stat(img.Path); fi.Mode().Perm()&0o222 != 0 {
		t.Errorf("image file is writable: %v", fi.Mode())
	}
	g, err := s.Get("base")
	if err != nil || g.Manifest != img.Manifest || g.Path != img.Path {
		t.Fatalf("Get = %+v, %v; want %+v", g, err, img)
	}
	if err := s.Verify(ctx, "base"); err != nil {
		t.Errorf("Verify: %v", err)
	}
	if _, err := s.Create(ctx, "base", src, "test", writeBytes(content)); !errors.Is(err, store.ErrExists) {
		t.Errorf("second Create base: %v, want ErrExists", err)
	}
	if _, err := s.Create(ctx, "alpha", src, "test", writeBytes([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	if n := names(t, s); strings.Join(n, ",") != "alpha,base" {
		t.Errorf("List = %v", n)
	}
	if err := s.Remove("alpha", false); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if _, err := s.Get("alpha"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get removed: %v", err)
	}
	if err := s.Remove("alpha", false); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Remove twice: %v", err)
	}
	if h := hidden(t, s.Dir()); len(h) != 0 {
		t.Errorf("left behind: %v", h)
	}
	// A build that fails leaves nothing; the name stays free.
	boom := errors.New("boom")
	_, err = s.Create(ctx, "bad", src, "test", func(ctx context.Context, p string) error {
		os.WriteFile(p, []byte("half"), 0o644)
		return boom
	})
	if !errors.Is(err, boom) {
		t.Errorf("failing build: %v", err)
	}
	if _, err := s.Create(ctx, "empty", src, "test", writeBytes(nil)); err == nil || !strings.Contains(err.Error(), "empty") {
		t.Errorf("empty build: %v", err)
	}
	if h := hidden(t, s.Dir()); len(h) != 0 {
		t.Errorf("failed builds left: %v", h)
	}
	if n := names(t, s); strings.Join(n, ",") != "base" {
		t.Errorf("List = %v", n)
	}
	// A tampered image fails Verify.
	os.Chmod(img.Path, 0o644)
	os.WriteFile(img.Path, bytes.Repeat([]byte("EXT4"), 1000), 0o644)
	if err := s.Verify(ctx, "base"); !errors.Is(err, store.ErrCorrupt) {
		t.Errorf("Verify tampered: %v", err)
	}
}

func sha256Sum(b []byte) []byte { return sumOf(b) }

func TestNames(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"", ".hidden", "-x", "a/b", "../x", "a b", strings.Repeat("a", 129), ".pending-x"} {
		if _, err := s.Create(context.Background(), n, &store.Source{}, "t", writeBytes([]byte("x"))); !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Create(%q): %v, want ErrInvalidName", n, err)
		}
		if _, err := s.Get(n); !errors.Is(err, store.ErrInvalidName) {
			t.Errorf("Get(%q): %v", n, err)
		}
	}
	for _, n := range []string{"alpine:3.19", "a", "ubuntu_22.04-min"} {
		if _, err := s.Create(context.Background(), n, &store.Source{}, "t", writeBytes([]byte("x"))); err != nil {
			t.Errorf("Create(%q): %v", n, err)
		}
	}
}

func TestInUse(t *testing.T) {
	ctx := context.Background()
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Create(ctx, "base", &store.Source{Kind: "dir"}, "t", writeBytes([]byte("x"))); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Use("nope", "vm1"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Use missing image: %v", err)
	}
	if _, err := s.Use("base", "../vm"); err == nil {
		t.Errorf("Use with a bad user succeeded")
	}
	for _, vm := range []string{"vm2", "vm1", "vm1"} {
		if _, err := s.Use("base", vm); err != nil {
			t.Fatalf("Use %s: %v", vm, err)
		}
	}
	u, err := s.Users("base")
	if err != nil || strings.Join(u, ",") != "vm1,vm2" {
		t.Errorf("Users = %v, %v", u, err)
	}
	err = s.Remove("base", false)
	if !errors.Is(err, store.ErrInUse) || !strings.Contains(err.Error(), "vm1, vm2") {
		t.Errorf("Remove in use: %v", err)
	}
	// Another process (a second Open) sees the same leases.
	s2, _ := store.Open(s.Dir())
	if err := s2.Remove("base", false); !errors.Is(err, store.ErrInUse) {
		t.Errorf("Remove in use, second store: %v", err)
	}
	if err := s.Release("base", "vm1"); err != nil {
		t.Fatal(err)
	}
	if err := s.Release("base", "vm1"); err != nil {
		t.Errorf("Release twice: %v", err)
	}
	if err := s.Remove("base", false); !errors.Is(err, store.ErrInUse) || strings.Contains(err.Error(), "vm1") {
		t.Errorf("Remove with vm2 left: %v", err)
	}
	if err := s.Remove("base", true); err != nil {
		t.Errorf("forced Remove: %v", err)
	}
	if _, err := s.Get("base"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get after forced remove: %v", err)
	}
	if err := s.Release("base", "vm2"); err != nil {
		t.Errorf("Release of a removed image: %v", err)
	}
	if h := hidden(t, s.Dir()); len(h) != 0 {
		t.Errorf("left behind: %v", h)
	}
}

func TestConcurrentCreate(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	wins, exists := 0, 0
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Create(context.Background(), "same", &store.Source{}, "t", writeBytes([]byte(fmt.Sprint(i))))
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				wins++
			case errors.Is(err, store.ErrExists):
				exists++
			default:
				t.Errorf("Create: %v", err)
			}
		}()
	}
	wg.Wait()
	if wins != 1 || exists != 7 {
		t.Errorf("wins %d, exists %d; want 1 and 7", wins, exists)
	}
}

func TestCorruptManifest(t *testing.T) {
	s, err := store.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	img, err := s.Create(context.Background(), "base", &store.Source{}, "t", writeBytes([]byte("xyz")))
	if err != nil {
		t.Fatal(err)
	}
	mf := filepath.Join(filepath.Dir(img.Path), store.ManifestFileName)
	for _, bad := range []string{"{", `{"format_version": 99, "name": "base"}`, `{"format_version": 1, "name": "other"}`} {
		os.WriteFile(mf, []byte(bad), 0o600)
		if _, err := s.Get("base"); !errors.Is(err, store.ErrCorrupt) {
			t.Errorf("Get with manifest %s: %v", bad, err)
		}
		imgs, err := s.List()
		if len(imgs) != 0 || !errors.Is(err, store.ErrCorrupt) {
			t.Errorf("List with manifest %s: %v, %v", bad, imgs, err)
		}
	}
}

// The crash test: a builder process is SIGKILLed in the middle of writing
// an image; nothing is visible, the name is free, and the next Open sweeps
// the half-written image. A live builder's work is not swept.
const helperEnv = "MVM_IMAGESTORE_HELPER"

func TestMain(m *testing.M) {
	if dir := os.Getenv(helperEnv); dir != "" {
		s, err := store.Open(dir)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(2)
		}
		_, err = s.Create(context.Background(), "victim", &store.Source{}, "t", func(ctx context.Context, p string) error {
			os.WriteFile(p, bytes.Repeat([]byte{1}, 1<<20), 0o644)
			fmt.Println("building")
			time.Sleep(time.Hour)
			return nil
		})
		fmt.Fprintln(os.Stderr, "unexpected return", err)
		os.Exit(3)
	}
	os.Exit(m.Run())
}

func TestBuilderKilled(t *testing.T) {
	dir := t.TempDir()
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	buf := make([]byte, 9)
	if _, err := out.Read(buf); err != nil || string(buf[:8]) != "building" {
		t.Fatalf("helper: %q %v", buf, err)
	}
	// While the builder lives: invisible, not swept, name taken.
	s, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h := hidden(t, dir); len(h) != 1 {
		t.Fatalf("live build swept or missing: %v", h)
	}
	if _, err := s.Get("victim"); !errors.Is(err, store.ErrNotFound) {
		t.Errorf("Get of an image being built: %v", err)
	}
	if _, err := s.Create(context.Background(), "victim", &store.Source{}, "t", writeBytes([]byte("x"))); !errors.Is(err, store.ErrExists) || !strings.Contains(err.Error(), "being built") {
		t.Errorf("Create while another process builds it: %v", err)
	}
	cmd.Process.Signal(syscall.SIGKILL)
	cmd.Wait()
	if h := hidden(t, dir); len(h) != 1 {
		t.Fatalf("pending build before the sweep: %v", h)
	}
	if n := names(t, s); len(n) != 0 {
		t.Errorf("List after the builder died: %v", n)
	}
	s2, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	if h := hidden(t, dir); len(h) != 0 {
		t.Errorf("Open did not sweep: %v", h)
	}
	if _, err := s2.Create(context.Background(), "victim", &store.Source{}, "t", writeBytes([]byte("x"))); err != nil {
		t.Errorf("Create after the crash: %v", err)
	}
}
