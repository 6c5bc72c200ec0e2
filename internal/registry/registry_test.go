package registry_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/registry"
	"golang.org/x/sys/unix"
)

type vmRecord struct {
	Name  string            `json:"name"`
	VCPUs int               `json:"vcpus"`
	Tags  map[string]string `json:"tags,omitempty"`
}

func openTemp(t *testing.T) *registry.Registry {
	t.Helper()
	r, err := registry.Open(filepath.Join(t.TempDir(), "state"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	return r
}

func TestRoundTrip(t *testing.T) {
	r := openTemp(t)
	want := vmRecord{Name: "web", VCPUs: 2, Tags: map[string]string{"team": "a"}}
	if err := r.Put("vm", "web-1", want); err != nil {
		t.Fatal(err)
	}
	var got vmRecord
	if err := r.Get("vm", "web-1", &got); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("Get = %+v, want %+v", got, want)
	}

	// Overwrite.
	want.VCPUs = 4
	if err := r.Put("vm", "web-1", want); err != nil {
		t.Fatal(err)
	}
	got = vmRecord{}
	if err := r.Get("vm", "web-1", &got); err != nil || got.VCPUs != 4 {
		t.Fatalf("after overwrite: Get = %+v, %v", got, err)
	}

	// A new Registry on the same directory sees it.
	r2, err := registry.Open(r.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	got = vmRecord{}
	if err := r2.Get("vm", "web-1", &got); err != nil || got.VCPUs != 4 {
		t.Fatalf("second registry: Get = %+v, %v", got, err)
	}

	// Nil v only checks the record.
	if err := r.Get("vm", "web-1", nil); err != nil {
		t.Fatalf("Get(nil) = %v", err)
	}
	// Non-pointer v is a caller error, not corruption.
	if err := r.Get("vm", "web-1", got); err == nil || errors.Is(err, registry.ErrCorrupt) {
		t.Fatalf("Get(non-pointer) = %v, want non-corrupt error", err)
	}
}

func TestEnvelopeOnDisk(t *testing.T) {
	r := openTemp(t)
	before := time.Now().UTC()
	if err := r.Put("snapshot", "s1", map[string]int{"size": 7}); err != nil {
		t.Fatal(err)
	}
	raw, err := os.ReadFile(filepath.Join(r.Dir(), "snapshot", "s1.json"))
	if err != nil {
		t.Fatal(err)
	}
	var env struct {
		Schema  int             `json:"schema"`
		Kind    string          `json:"kind"`
		ID      string          `json:"id"`
		Updated string          `json:"updated"`
		Data    json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(raw, &env); err != nil {
		t.Fatalf("record is not JSON: %v\n%s", err, raw)
	}
	if env.Schema != registry.SchemaVersion || env.Kind != "snapshot" || env.ID != "s1" || string(env.Data) != `{"size":7}` {
		t.Fatalf("envelope = %+v", env)
	}
	ts, err := time.Parse(time.RFC3339Nano, env.Updated)
	if err != nil || ts.Before(before.Add(-time.Second)) {
		t.Fatalf("updated = %q (%v)", env.Updated, err)
	}
}

func TestNotFoundAndDelete(t *testing.T) {
	r := openTemp(t)
	var v vmRecord
	if err := r.Get("vm", "nope", &v); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get missing (no kind dir) = %v, want ErrNotFound", err)
	}
	if err := r.Put("vm", "a", vmRecord{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Get("vm", "nope", &v); !errors.Is(err, registry.ErrNotFound) || !strings.Contains(err.Error(), "vm/nope") {
		t.Fatalf("Get missing = %v, want ErrNotFound naming vm/nope", err)
	}
	for i := range 3 {
		if err := r.Delete("vm", "a"); err != nil {
			t.Fatalf("Delete #%d = %v", i, err)
		}
	}
	if err := r.Delete("lease", "never"); err != nil {
		t.Fatalf("Delete in missing kind = %v", err)
	}
	if err := r.Get("vm", "a", &v); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get after Delete = %v", err)
	}
	if ids, err := r.List("vm"); err != nil || len(ids) != 0 {
		t.Fatalf("List after Delete = %v, %v", ids, err)
	}
}

func TestCreate(t *testing.T) {
	r := openTemp(t)
	if err := r.Create("lease", "10.0.0.2", "first"); err != nil {
		t.Fatal(err)
	}
	err := r.Create("lease", "10.0.0.2", "second")
	if !errors.Is(err, registry.ErrExists) || !strings.Contains(err.Error(), "lease/10.0.0.2") {
		t.Fatalf("second Create = %v, want ErrExists naming the record", err)
	}
	var s string
	if err := r.Get("lease", "10.0.0.2", &s); err != nil || s != "first" {
		t.Fatalf("Get = %q, %v; want first", s, err)
	}
	assertNoTemps(t, filepath.Join(r.Dir(), "lease"))
}

func TestCreateRace(t *testing.T) {
	r := openTemp(t)
	r2, err := registry.Open(r.Dir()) // a second handle races too
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	const n = 32
	var (
		wg      sync.WaitGroup
		start   = make(chan struct{})
		mu      sync.Mutex
		winners []int
	)
	for i := range n {
		wg.Go(func() {
			reg := r
			if i%2 == 1 {
				reg = r2
			}
			<-start
			err := reg.Create("vm", "contended", vmRecord{Name: fmt.Sprint(i)})
			switch {
			case err == nil:
				mu.Lock()
				winners = append(winners, i)
				mu.Unlock()
			case !errors.Is(err, registry.ErrExists):
				t.Errorf("Create #%d = %v", i, err)
			}
		})
	}
	close(start)
	wg.Wait()
	if len(winners) != 1 {
		t.Fatalf("%d winners (%v), want exactly 1", len(winners), winners)
	}
	var got vmRecord
	if err := r.Get("vm", "contended", &got); err != nil || got.Name != fmt.Sprint(winners[0]) {
		t.Fatalf("Get = %+v, %v; want winner %d", got, err, winners[0])
	}
	assertNoTemps(t, filepath.Join(r.Dir(), "vm"))
}

func TestConcurrentPut(t *testing.T) {
	r := openTemp(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Go(func() {
			for j := range 20 {
				id := fmt.Sprintf("vm-%d", j%4)
				if err := r.Put("vm", id, vmRecord{Name: id, VCPUs: i}); err != nil {
					t.Error(err)
				}
				var got vmRecord
				if err := r.Get("vm", id, &got); err != nil || got.Name != id {
					t.Errorf("Get %s = %+v, %v", id, got, err)
				}
			}
		})
	}
	wg.Wait()
	ids, err := r.List("vm")
	if err != nil || !slices.Equal(ids, []string{"vm-0", "vm-1", "vm-2", "vm-3"}) {
		t.Fatalf("List = %v, %v", ids, err)
	}
	assertNoTemps(t, filepath.Join(r.Dir(), "vm"))
}

func TestListSorted(t *testing.T) {
	r := openTemp(t)
	// File-name order ("a-b.json" < "a.json") differs from id order.
	ids := []string{"b", "a.b", "a-b", "a", "A", "0", "a_b", "zz"}
	for _, id := range ids {
		if err := r.Put("vm", id, id); err != nil {
			t.Fatal(err)
		}
	}
	if err := r.Put("snapshot", "other", 1); err != nil {
		t.Fatal(err)
	}
	// Foreign files are ignored.
	kdir := filepath.Join(r.Dir(), "vm")
	for _, name := range []string{".tmp-x-123", ".hidden.json", "notes.txt", "bad name.json"} {
		if err := os.WriteFile(filepath.Join(kdir, name), []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	got, err := r.List("vm")
	if err != nil {
		t.Fatal(err)
	}
	want := slices.Sorted(slices.Values(ids))
	if !slices.Equal(got, want) {
		t.Fatalf("List = %v, want %v", got, want)
	}
	if got, err := r.List("lease"); err != nil || got == nil || len(got) != 0 {
		t.Fatalf("List of empty kind = %#v, %v; want empty non-nil", got, err)
	}
}

func TestInvalidNames(t *testing.T) {
	root := t.TempDir()
	r, err := registry.Open(filepath.Join(root, "state"))
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	before := tree(t, root)

	long := strings.Repeat("a", 129)
	badKinds := []string{"", "VM", "v1", "v-m", "../x", "a/b", ".hidden", "vм", "é", "locks", strings.Repeat("a", 33), " vm", "vm\x00"}
	badIDs := []string{"", "../x", "a/b", ".hidden", ".", "..", "-x", long, "café", "ﬁ", "a b", "a\x00b", "a\\b", "a:b", "/abs", "x\n"}

	check := func(t *testing.T, what string, err error) {
		t.Helper()
		if !errors.Is(err, registry.ErrInvalidName) {
			t.Errorf("%s = %v, want ErrInvalidName", what, err)
		}
	}
	for _, k := range badKinds {
		t.Run("kind="+k, func(t *testing.T) {
			check(t, "Put", r.Put(k, "ok", 1))
			check(t, "Create", r.Create(k, "ok", 1))
			check(t, "Get", r.Get(k, "ok", new(int)))
			check(t, "Delete", r.Delete(k, "ok"))
			_, err := r.List(k)
			check(t, "List", err)
			if err != nil && !strings.Contains(err.Error(), "kind") {
				t.Errorf("error %q does not say kind", err)
			}
			check(t, "ValidateKind", registry.ValidateKind(k))
		})
	}
	for _, id := range badIDs {
		t.Run("id="+id, func(t *testing.T) {
			check(t, "Put", r.Put("vm", id, 1))
			check(t, "Create", r.Create("vm", id, 1))
			check(t, "Get", r.Get("vm", id, new(int)))
			check(t, "Delete", r.Delete("vm", id))
			_, err := r.Lock(t.Context(), id)
			check(t, "Lock", err)
			err = registry.ValidateID(id)
			check(t, "ValidateID", err)
			if err != nil && len(id) <= 64 && !strings.Contains(err.Error(), fmt.Sprintf("%q", id)) {
				t.Errorf("error %q does not name %q", err, id)
			}
		})
	}
	if after := tree(t, root); !slices.Equal(before, after) {
		t.Fatalf("files changed:\nbefore %v\nafter  %v", before, after)
	}

	// The error names the rule.
	err = registry.ValidateID("-x")
	if err == nil || !strings.Contains(err.Error(), "must not start with") {
		t.Fatalf("ValidateID(-x) = %v", err)
	}
	err = registry.ValidateID(long)
	if err == nil || !strings.Contains(err.Error(), "1-128") {
		t.Fatalf("ValidateID(129 chars) = %v", err)
	}

	// Boundaries are accepted.
	for _, id := range []string{"a", strings.Repeat("a", 128), "A.b_c-9", "a..b", "10.0.0.1"} {
		if err := registry.ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v", id, err)
		}
	}
	for _, k := range []string{"a", strings.Repeat("z", 32), "vm", "snapshot", "lease"} {
		if err := registry.ValidateKind(k); err != nil {
			t.Errorf("ValidateKind(%q) = %v", k, err)
		}
	}
}

func TestCorruptRecord(t *testing.T) {
	r := openTemp(t)
	for _, id := range []string{"a", "b", "c"} {
		if err := r.Put("vm", id, vmRecord{Name: id}); err != nil {
			t.Fatal(err)
		}
	}
	bPath := filepath.Join(r.Dir(), "vm", "b.json")
	if err := os.WriteFile(bPath, []byte("\x00garbage{{{"), 0o600); err != nil {
		t.Fatal(err)
	}

	var v vmRecord
	err := r.Get("vm", "b", &v)
	var ce *registry.CorruptError
	if !errors.As(err, &ce) || ce.Path != bPath || !errors.Is(err, registry.ErrCorrupt) {
		t.Fatalf("Get corrupt = %v, want *CorruptError for %s", err, bPath)
	}
	if !strings.Contains(err.Error(), bPath) {
		t.Fatalf("error %q does not name the file", err)
	}
	for _, id := range []string{"a", "c"} {
		if err := r.Get("vm", id, &v); err != nil || v.Name != id {
			t.Fatalf("Get %s = %+v, %v", id, v, err)
		}
	}
	ids, err := r.List("vm")
	if err != nil || !slices.Equal(ids, []string{"a", "b", "c"}) {
		t.Fatalf("List = %v, %v", ids, err)
	}
	// Put repairs it.
	if err := r.Put("vm", "b", vmRecord{Name: "b"}); err != nil {
		t.Fatal(err)
	}
	if err := r.Get("vm", "b", &v); err != nil || v.Name != "b" {
		t.Fatalf("Get after repair = %+v, %v", v, err)
	}
}

func TestCorruptVariants(t *testing.T) {
	r := openTemp(t)
	if err := r.Put("vm", "a", vmRecord{Name: "a"}); err != nil {
		t.Fatal(err)
	}
	good, err := os.ReadFile(filepath.Join(r.Dir(), "vm", "a.json"))
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name    string
		content string
		want    error
	}{
		{"empty", "", registry.ErrCorrupt},
		{"truncated", string(good[:len(good)/2]), registry.ErrCorrupt},
		{"not an envelope", `{"name":"x","vcpus":1}`, registry.ErrCorrupt},
		{"array", `[1,2]`, registry.ErrCorrupt},
		{"schema string", `{"schema":"1","kind":"vm","id":"x","data":{}}`, registry.ErrCorrupt},
		{"schema negative", `{"schema":-1,"kind":"vm","id":"x","data":{}}`, registry.ErrCorrupt},
		{"schema fraction", `{"schema":1.5,"kind":"vm","id":"x","data":{}}`, registry.ErrCorrupt},
		{"wrong id", strings.Replace(string(good), `"id":"a"`, `"id":"other"`, 1), registry.ErrCorrupt},
		{"wrong kind", strings.Replace(string(good), `"kind":"vm"`, `"kind":"lease"`, 1), registry.ErrCorrupt},
		{"no data", `{"schema":1,"kind":"vm","id":"x"}`, registry.ErrCorrupt},
		{"data wrong type", `{"schema":1,"kind":"vm","id":"x","data":[1]}`, registry.ErrCorrupt},
		{"newer schema", `{"schema":2,"kind":"vm","id":"x","data":{},"new":true}`, registry.ErrSchema},
		{"ok", `{"schema":1,"kind":"vm","id":"x","updated":"","data":{"name":"n"},"extra":1}`, nil},
	}
	path := filepath.Join(r.Dir(), "vm", "x.json")
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			var v vmRecord
			err := r.Get("vm", "x", &v)
			if tc.want == nil {
				if err != nil {
					t.Fatalf("Get = %v", err)
				}
				return
			}
			if !errors.Is(err, tc.want) {
				t.Fatalf("Get = %v, want %v", err, tc.want)
			}
			if !strings.Contains(err.Error(), path) {
				t.Fatalf("error %q does not name %s", err, path)
			}
			if tc.want == registry.ErrSchema && errors.Is(err, registry.ErrCorrupt) {
				t.Fatalf("newer schema reported as corrupt: %v", err)
			}
		})
	}
	// A directory where a record should be is corrupt, and still listed.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := r.Get("vm", "x", nil); !errors.Is(err, registry.ErrCorrupt) {
		t.Fatalf("Get of directory = %v, want ErrCorrupt", err)
	}
	if ids, err := r.List("vm"); err != nil || !slices.Equal(ids, []string{"a", "x"}) {
		t.Fatalf("List = %v, %v", ids, err)
	}
}

func TestStaleTemps(t *testing.T) {
	r := openTemp(t)
	if err := r.Put("vm", "a", 1); err != nil {
		t.Fatal(err)
	}
	kdir := filepath.Join(r.Dir(), "vm")
	oldTmp := filepath.Join(kdir, ".tmp-a-111")
	newTmp := filepath.Join(kdir, ".tmp-a-222")
	for _, p := range []string{oldTmp, newTmp} {
		if err := os.WriteFile(p, []byte(`{"schema":1,"kind":"vm","id":"a","da`), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	past := time.Now().Add(-2 * registry.StaleTempAge)
	if err := os.Chtimes(oldTmp, past, past); err != nil {
		t.Fatal(err)
	}
	r2, err := registry.Open(r.Dir())
	if err != nil {
		t.Fatal(err)
	}
	defer r2.Close()
	if _, err := os.Stat(oldTmp); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stale temp file survived Open: %v", err)
	}
	if _, err := os.Stat(newTmp); err != nil {
		t.Fatalf("fresh temp file removed by Open: %v", err)
	}
	if ids, err := r2.List("vm"); err != nil || !slices.Equal(ids, []string{"a"}) {
		t.Fatalf("List = %v, %v", ids, err)
	}
	var n int
	if err := r2.Get("vm", "a", &n); err != nil || n != 1 {
		t.Fatalf("Get = %d, %v", n, err)
	}
}

func TestPermissions(t *testing.T) {
	for _, mask := range []int{0, 0o022, 0o277} {
		t.Run(fmt.Sprintf("umask=%04o", mask), func(t *testing.T) {
			root := t.TempDir()
			old := unix.Umask(mask)
			defer unix.Umask(old)
			r, err := registry.Open(filepath.Join(root, "state"))
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if err := r.Put("vm", "a", 1); err != nil {
				t.Fatal(err)
			}
			if err := r.Create("lease", "b", 2); err != nil {
				t.Fatal(err)
			}
			unlock, err := r.Lock(t.Context(), "l")
			if err != nil {
				t.Fatal(err)
			}
			unlock()
			unix.Umask(old)
			n := 0
			err = filepath.WalkDir(r.Dir(), func(path string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				info, err := d.Info()
				if err != nil {
					return err
				}
				want := fs.FileMode(0o600)
				if d.IsDir() {
					want = fs.ModeDir | 0o700
				}
				if info.Mode() != want {
					t.Errorf("%s: mode %v, want %v", path, info.Mode(), want)
				}
				n++
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if n != 7 { // state, locks, l.lock, vm, a.json, lease, b.json
				t.Errorf("walked %d entries, want 7", n)
			}
		})
	}
}

func TestOpenErrors(t *testing.T) {
	root := t.TempDir()
	file := filepath.Join(root, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := registry.Open(file); err == nil || !strings.Contains(err.Error(), "not a directory") || !strings.Contains(err.Error(), file) {
		t.Fatalf("Open(file) = %v, want a 'not a directory' error naming it", err)
	}
	if _, err := registry.Open(filepath.Join(file, "sub")); err == nil || !strings.Contains(err.Error(), file) {
		t.Fatalf("Open(file/sub) = %v, want error", err)
	}
	if _, err := registry.Open(""); err == nil {
		t.Fatal("Open(\"\") succeeded")
	}
	locks := filepath.Join(root, "badlocks")
	if err := os.MkdirAll(locks, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(locks, "locks"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := registry.Open(locks); err == nil || !strings.Contains(err.Error(), "not a directory") {
		t.Fatalf("Open with locks as a file = %v", err)
	}

	// Relative paths are made absolute.
	t.Chdir(root)
	r, err := registry.Open("rel")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if want := filepath.Join(root, "rel"); r.Dir() != want {
		t.Fatalf("Dir = %q, want %q", r.Dir(), want)
	}
}

func TestOpenNotWritable(t *testing.T) {
	if os.Geteuid() == 0 {
		t.Skip("root bypasses directory permissions")
	}
	dir := filepath.Join(t.TempDir(), "ro")
	if err := os.Mkdir(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o700)
	if _, err := registry.Open(dir); err == nil || !strings.Contains(err.Error(), "not writable") {
		t.Fatalf("Open(read-only dir) = %v, want 'not writable'", err)
	}
}

func TestClosed(t *testing.T) {
	r := openTemp(t)
	if err := r.Put("vm", "a", 1); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close = %v", err)
	}
	if err := r.Put("vm", "a", 1); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("Put after Close = %v", err)
	}
	if err := r.Get("vm", "a", nil); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("Get after Close = %v", err)
	}
	if _, err := r.List("vm"); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("List after Close = %v", err)
	}
	if _, err := r.Lock(t.Context(), "x"); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("Lock after Close = %v", err)
	}
	var zero registry.Registry
	if err := zero.Put("vm", "a", 1); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("zero Registry Put = %v", err)
	}
	var nilReg *registry.Registry
	if err := nilReg.Get("vm", "a", nil); !errors.Is(err, registry.ErrClosed) {
		t.Errorf("nil Registry Get = %v", err)
	}
}

func TestPutUnencodable(t *testing.T) {
	r := openTemp(t)
	if err := r.Put("vm", "a", make(chan int)); err == nil || !strings.Contains(err.Error(), "vm/a") {
		t.Fatalf("Put(chan) = %v, want error naming vm/a", err)
	}
	if err := r.Get("vm", "a", nil); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get after failed Put = %v, want ErrNotFound", err)
	}
	assertNoTemps(t, filepath.Join(r.Dir(), "vm"))
}

// assertNoTemps fails if dir holds hidden (temporary) files.
func assertNoTemps(t *testing.T, dir string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		t.Fatal(err)
	}
	for _, e := range ents {
		if strings.HasPrefix(e.Name(), ".") {
			t.Errorf("leftover temporary file %s", filepath.Join(dir, e.Name()))
		}
	}
}

// tree lists every path under root.
func tree(t *testing.T, root string) []string {
	t.Helper()
	var paths []string
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		paths = append(paths, path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return paths
}
