package snapshot

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	microvm "github.com/mvm-dev/microvm"
)

// damage makes path writable and applies f to it.
func damage(t *testing.T, path string, f func(path string)) {
	t.Helper()
	if err := os.Chmod(path, 0o600); err != nil && !os.IsNotExist(err) {
		t.Fatal(err)
	}
	f(path)
}

func TestVerifyDetects(t *testing.T) {
	ctx := context.Background()
	cases := []struct {
		name   string
		file   string // damaged file
		damage func(t *testing.T, path string)
		reason string
	}{
		{"flipped byte in memory", MemoryFileName, func(t *testing.T, p string) {
			f, _ := os.OpenFile(p, os.O_RDWR, 0)
			defer f.Close()
			b := []byte{0}
			f.ReadAt(b, 1<<20+5)
			b[0] ^= 0x20
			f.WriteAt(b, 1<<20+5)
		}, "checksum mismatch"},
		{"flipped byte in state", StateFileName, func(t *testing.T, p string) {
			b, _ := os.ReadFile(p)
			b[len(b)-1] ^= 1
			os.WriteFile(p, b, 0o600)
		}, "checksum mismatch"},
		{"truncated memory", MemoryFileName, func(t *testing.T, p string) { os.Truncate(p, 1<<20) }, "truncated"},
		{"grown memory", MemoryFileName, func(t *testing.T, p string) { os.Truncate(p, 3<<20) }, "size changed"},
		{"missing memory", MemoryFileName, func(t *testing.T, p string) { os.Remove(p) }, "missing"},
		{"missing state", StateFileName, func(t *testing.T, p string) { os.Remove(p) }, "missing"},
		{"memory replaced by a symlink", MemoryFileName, func(t *testing.T, p string) {
			other := filepath.Join(t.TempDir(), "m")
			b, _ := os.ReadFile(p)
			os.WriteFile(other, b, 0o600)
			os.Remove(p)
			os.Symlink(other, p)
		}, "symbolic link"},
		{"memory replaced by a directory", MemoryFileName, func(t *testing.T, p string) {
			os.Remove(p)
			os.Mkdir(p, 0o700)
		}, "not a regular file"},
		{"missing manifest", ManifestFileName, func(t *testing.T, p string) { os.Remove(p) }, "manifest is missing"},
		{"garbage manifest", ManifestFileName, func(t *testing.T, p string) { os.WriteFile(p, []byte("\x00garbage"), 0o600) }, "not valid JSON"},
		{"empty manifest", ManifestFileName, func(t *testing.T, p string) { os.WriteFile(p, nil, 0o600) }, "not valid JSON"},
		{"manifest without format version", ManifestFileName, func(t *testing.T, p string) { editManifest(t, p, "format_version", nil) }, "no format_version"},
		{"newer format version", ManifestFileName, func(t *testing.T, p string) { editManifest(t, p, "format_version", FormatVersion+1) }, "incompatible"},
		{"manifest of another id", ManifestFileName, func(t *testing.T, p string) { editManifest(t, p, "id", "other") }, "does not match"},
		{"manifest with a bad sha", ManifestFileName, func(t *testing.T, p string) {
			editManifest(t, p, "files", []File{{StateFileName, 1, "x"}, {MemoryFileName, 1, "y"}})
		}, "sha256"},
		{"manifest with a path as file name", ManifestFileName, func(t *testing.T, p string) {
			editManifest(t, p, "files", []File{{"../../etc/passwd", 1, strings.Repeat("a", 64)}, {MemoryFileName, 1, strings.Repeat("a", 64)}})
		}, "files must list"},
		{"diff manifest without parent", ManifestFileName, func(t *testing.T, p string) { editManifest(t, p, "type", "diff") }, "parent is required"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := openStore(t)
			createFull(t, s, "v", "vm", pseudo(9, 2<<20))
			if err := s.Verify(ctx, "v"); err != nil {
				t.Fatal(err)
			}
			path := filepath.Join(s.Dir(), "v", c.file)
			damage(t, path, func(p string) { c.damage(t, p) })
			err := s.Verify(ctx, "v")
			var ce *CorruptError
			if !errors.Is(err, microvm.ErrSnapshotCorrupt) || !errors.As(err, &ce) {
				t.Fatalf("Verify = %v, want a CorruptError", err)
			}
			if ce.File != path || ce.ID != "v" || !strings.Contains(err.Error(), c.reason) || !strings.Contains(err.Error(), path) {
				t.Errorf("Verify = %v (file %s), want it to name %s and say %q", err, ce.File, path, c.reason)
			}
			if c.file == ManifestFileName {
				_, err := s.Get("v")
				wantErr(t, err, microvm.ErrSnapshotCorrupt)
				// A corrupt snapshot can still be deleted.
				if err := s.Delete("v", false); err != nil {
					t.Fatal(err)
				}
				onlyVisible(t, s.Dir())
			} else if _, err := s.Get("v"); err != nil {
				t.Errorf("Get of a snapshot with a damaged %s = %v; Get reads only the manifest", c.file, err)
			}
		})
	}
}

func editManifest(t *testing.T, path, key string, value any) {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := json.Unmarshal(raw, &m); err != nil {
		t.Fatal(err)
	}
	if value == nil {
		delete(m, key)
	} else {
		m[key] = value
	}
	raw, _ = json.Marshal(m)
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestMemoryFileChecksSize(t *testing.T) {
	s := openStore(t)
	createFull(t, s, "m", "vm", pseudo(1, 2*page))
	path := filepath.Join(s.Dir(), "m", MemoryFileName)
	damage(t, path, func(p string) { os.Truncate(p, page) })
	_, err := s.MemoryFile(context.Background(), "m")
	wantErr(t, err, microvm.ErrSnapshotCorrupt)
	if !strings.Contains(err.Error(), "truncated") {
		t.Errorf("MemoryFile = %v", err)
	}
	os.Remove(path)
	_, err = s.MemoryFile(context.Background(), "m")
	wantErr(t, err, microvm.ErrSnapshotCorrupt)
}

func TestVerifyCanceled(t *testing.T) {
	s := openStore(t)
	createFull(t, s, "c", "vm", pseudo(1, 4<<20))
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	err := s.Verify(ctx, "c")
	wantErr(t, err, context.Canceled)
	if errors.Is(err, microvm.ErrSnapshotCorrupt) {
		t.Errorf("a canceled Verify reports corruption: %v", err)
	}
}
