package registry

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
)

// SchemaVersion is the envelope schema this build writes. It reads records
// of this version and, through migrations, of older ones.
const SchemaVersion = 1

// envelope is the on-disk form of every record (schema 1).
type envelope struct {
	Schema  int             `json:"schema"`
	Kind    string          `json:"kind"`
	ID      string          `json:"id"`
	Updated string          `json:"updated"`
	Data    json.RawMessage `json:"data"`
}

// A migration lifts the bytes of one record from schema N to schema N+1. It
// receives the kind and id taken from the record's path.
type migration func(kind, id string, raw []byte) ([]byte, error)

// migrations maps schema N to the step from N to N+1; Get applies the steps
// in order, in memory, and never rewrites the file (the next Put does).
//
// It is empty because schema 1 is the first on-disk format. When
// SchemaVersion becomes 2, add migrations[1] together with a test that
// decodes a stored schema-1 record. Schema 0 stands for "no schema field"
// (a file that is not an envelope); with no entry for 0 such a file is
// corrupt.
var migrations = map[int]migration{}

// encode builds the file contents of a record: the envelope with the JSON
// of v spliced in as "data", so a large value is encoded only once.
func encode(kind, id, updated string, v any) ([]byte, error) {
	data, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode value: %w", err)
	}
	head, err := json.Marshal(envelope{Schema: SchemaVersion, Kind: kind, ID: id, Updated: updated, Data: json.RawMessage("null")})
	if err != nil {
		return nil, fmt.Errorf("encode envelope: %w", err)
	}
	head, ok := bytes.CutSuffix(head, []byte(`null}`))
	if !ok { // data is the last field of envelope
		return nil, fmt.Errorf("encode envelope: unexpected form %s", head)
	}
	buf := make([]byte, 0, len(head)+len(data)+2)
	buf = append(append(append(buf, head...), data...), "}\n"...)
	return buf, nil
}

// schemaOf returns the schema version of a record file's contents: the
// integer "schema" field of a JSON object, or 0 when the JSON value has no
// such field (not an envelope).
func schemaOf(raw []byte) (int, error) {
	var probe struct {
		Schema json.RawMessage `json:"schema"`
	}
	if err := json.Unmarshal(raw, &probe); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) {
			return 0, nil // valid JSON, but not an object
		}
		return 0, fmt.Errorf("invalid JSON: %w", err)
	}
	if probe.Schema == nil || bytes.Equal(probe.Schema, []byte("null")) {
		return 0, nil
	}
	var n int
	if err := json.Unmarshal(probe.Schema, &n); err != nil || n < 0 {
		return 0, fmt.Errorf("schema field %s is not a non-negative integer", probe.Schema)
	}
	return n, nil
}

// decode checks a record file's contents against the kind and id of its
// path, migrating older schemas up to target with table. Errors are
// *CorruptError or wrap ErrSchema.
func decode(path, kind, id string, raw []byte, target int, table map[int]migration) (envelope, error) {
	// Fast path, one parse: a record of the current schema (every record
	// this build writes). Anything else takes the careful path below.
	var env envelope
	if json.Unmarshal(raw, &env) == nil && env.Schema == target && target > 0 {
		return checkEnvelope(path, kind, id, env)
	}
	ver, err := schemaOf(raw)
	if err != nil {
		return envelope{}, &CorruptError{Path: path, Err: err}
	}
	if ver > target {
		return envelope{}, fmt.Errorf("%w: %s has schema %d; this build reads schema %d and older", ErrSchema, path, ver, target)
	}
	for ver < target {
		step, ok := table[ver]
		if !ok {
			if ver == 0 {
				return envelope{}, &CorruptError{Path: path, Err: errors.New(`not a registry record (no "schema" field)`)}
			}
			return envelope{}, fmt.Errorf("%w: %s has schema %d and there is no migration to %d", ErrSchema, path, ver, ver+1)
		}
		if raw, err = step(kind, id, raw); err != nil {
			return envelope{}, &CorruptError{Path: path, Err: fmt.Errorf("migrate schema %d to %d: %w", ver, ver+1, err)}
		}
		next, err := schemaOf(raw)
		if err != nil || next != ver+1 {
			return envelope{}, &CorruptError{Path: path, Err: fmt.Errorf("migration from schema %d produced schema %d (err %v)", ver, next, err)}
		}
		ver = next
	}
	env = envelope{}
	if err := json.Unmarshal(raw, &env); err != nil {
		return envelope{}, &CorruptError{Path: path, Err: fmt.Errorf("decode envelope: %w", err)}
	}
	return checkEnvelope(path, kind, id, env)
}

// checkEnvelope checks that a decoded envelope names kind and id and has
// data.
func checkEnvelope(path, kind, id string, env envelope) (envelope, error) {
	if env.Kind != kind || env.ID != id {
		return envelope{}, &CorruptError{Path: path, Err: fmt.Errorf("record is for %q/%q, not %q/%q", env.Kind, env.ID, kind, id)}
	}
	if len(env.Data) == 0 {
		return envelope{}, &CorruptError{Path: path, Err: errors.New(`missing "data" field`)}
	}
	return env, nil
}
