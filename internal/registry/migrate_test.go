package registry

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// v0ToV1 is a synthetic migration used only by tests: schema 0 is taken to
// be the bare JSON of the value, with no envelope.
func v0ToV1(kind, id string, raw []byte) ([]byte, error) {
	if !json.Valid(raw) {
		return nil, errors.New("not JSON")
	}
	return json.Marshal(envelope{Schema: 1, Kind: kind, ID: id, Data: raw})
}

func withMigrations(t *testing.T, table map[int]migration) {
	t.Helper()
	saved := migrations
	migrations = table
	t.Cleanup(func() { migrations = saved })
}

func TestMigrationHook(t *testing.T) {
	r, err := Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if err := r.Put("vm", "new", map[string]string{"name": "new"}); err != nil {
		t.Fatal(err)
	}
	// A synthetic schema-0 record: bare data, no envelope.
	path := filepath.Join(r.Dir(), "vm", "old.json")
	if err := os.WriteFile(path, []byte(`{"name":"old"}`), 0o600); err != nil {
		t.Fatal(err)
	}

	var v struct{ Name string }
	// Without a migration for schema 0 the file is not a record.
	if err := r.Get("vm", "old", &v); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("Get v0 without migration = %v, want ErrCorrupt", err)
	}

	withMigrations(t, map[int]migration{0: v0ToV1})
	if err := r.Get("vm", "old", &v); err != nil || v.Name != "old" {
		t.Fatalf("Get v0 with migration = %+v, %v", v, err)
	}
	// Current records are untouched by the table.
	if err := r.Get("vm", "new", &v); err != nil || v.Name != "new" {
		t.Fatalf("Get v1 = %+v, %v", v, err)
	}
	// Get does not rewrite the file; the next Put does.
	if raw, _ := os.ReadFile(path); string(raw) != `{"name":"old"}` {
		t.Fatalf("Get rewrote the file: %s", raw)
	}
	if err := r.Put("vm", "old", v); err != nil {
		t.Fatal(err)
	}
	if raw, _ := os.ReadFile(path); !strings.HasPrefix(string(raw), `{"schema":1,`) {
		t.Fatalf("Put did not write schema 1: %s", raw)
	}
}

func TestMigrationChain(t *testing.T) {
	path := "/state/vm/a.json"
	// Lift to a pretend schema 3 through 1 -> 2 -> 3.
	bump := func(to int) migration {
		return func(kind, id string, raw []byte) ([]byte, error) {
			var env envelope
			if err := json.Unmarshal(raw, &env); err != nil {
				return nil, err
			}
			env.Schema = to
			return json.Marshal(env)
		}
	}
	rec := []byte(`{"schema":1,"kind":"vm","id":"a","data":{"x":1}}`)
	env, err := decode(path, "vm", "a", rec, 3, map[int]migration{1: bump(2), 2: bump(3)})
	if err != nil || env.Schema != 3 || string(env.Data) != `{"x":1}` {
		t.Fatalf("decode via chain = %+v, %v", env, err)
	}
	// A gap in the chain is an unsupported (old) schema, not corruption.
	_, err = decode(path, "vm", "a", rec, 3, map[int]migration{1: bump(2)})
	if !errors.Is(err, ErrSchema) || errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), path) {
		t.Fatalf("decode with gap = %v, want ErrSchema", err)
	}
	// A migration that skips a version is a bug, reported as corrupt.
	_, err = decode(path, "vm", "a", rec, 3, map[int]migration{1: bump(3)})
	if !errors.Is(err, ErrCorrupt) {
		t.Fatalf("decode with bad step = %v, want ErrCorrupt", err)
	}
	// A failing migration is reported as corrupt, naming the step.
	_, err = decode(path, "vm", "a", rec, 2, map[int]migration{1: func(string, string, []byte) ([]byte, error) {
		return nil, errors.New("boom")
	}})
	if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), "migrate schema 1 to 2: boom") {
		t.Fatalf("decode with failing step = %v", err)
	}
}

func TestProductionMigrationTable(t *testing.T) {
	// Every entry must lift a version below SchemaVersion.
	for from := range migrations {
		if from < 0 || from >= SchemaVersion {
			t.Errorf("migration from schema %d is outside [0, %d)", from, SchemaVersion)
		}
	}
}
