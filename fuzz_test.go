package microvm

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzValidateID checks ValidateID against a plain restatement of the id
// rule, and the shape of its errors. Seeds: testdata/fuzz/FuzzValidateID.
func FuzzValidateID(f *testing.F) {
	for _, id := range []string{"", "a", "web-1", "-a", "a_b", "../x", "é", "a\x00", strings.Repeat("a", 65)} {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		err := ValidateID(id)
		valid := len(id) >= 1 && len(id) <= MaxIDLen && id[0] != '-'
		for i := 0; valid && i < len(id); i++ {
			c := id[i]
			valid = c == '-' || '0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		}
		if valid != (err == nil) {
			t.Fatalf("ValidateID(%q) = %v, want valid=%v", id, err, valid)
		}
		if err == nil {
			return
		}
		var ie *IDError
		if !errors.Is(err, ErrInvalidID) || !errors.As(err, &ie) || ie.ID != id || ie.Field != "id" || ie.Rule == "" {
			t.Fatalf("ValidateID(%q) = %#v", id, err)
		}
		msg := err.Error()
		if !strings.HasPrefix(msg, "invalid id ") || len(msg) > 400 || !utf8.ValidString(msg) {
			t.Fatalf("ValidateID(%q) message %q", id, msg)
		}
		if serr := ValidateSnapshotID(id); serr == nil || !strings.HasPrefix(serr.Error(), "invalid snapshot id ") {
			t.Fatalf("ValidateSnapshotID(%q) = %v, disagrees with ValidateID", id, serr)
		}
	})
}

// FuzzSpecValidate decodes a spec from JSON and checks that WithDefaults,
// Clone and Validate never panic, that WithDefaults is idempotent and
// leaves its receiver alone, that Validate reports problems in the
// documented shape, and that a valid spec stays valid through the JSON a
// registry stores. Seeds: testdata/fuzz/FuzzSpecValidate.
func FuzzSpecValidate(f *testing.F) {
	f.Add([]byte(`{"kernel":"/k","root_drive":{"path":"/r"},"vcpus":1,"memory_mib":128}`))
	f.Add([]byte(`{}`))
	f.Add([]byte(`{"kernel":"/k","root_drive":{"path":"/r"},"vcpus":2,"memory_mib":64,"network":[{"host_dev_name":"tap0","guest_mac":"02:00:00:00:00:01"}],"mmds":{"data":{"a":1}}}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		var s Spec
		if json.Unmarshal(data, &s) != nil {
			return
		}
		before := jsonOf(t, s)
		_ = s.Validate() // without defaults: must not panic either
		d := s.WithDefaults()
		if after := jsonOf(t, s); after != before {
			t.Fatalf("WithDefaults changed its receiver:\n%s\n%s", before, after)
		}
		if a, b := jsonOf(t, d), jsonOf(t, d.WithDefaults()); a != b {
			t.Fatalf("WithDefaults is not idempotent:\n%s\n%s", a, b)
		}
		if a, b := jsonOf(t, d), jsonOf(t, d.Clone()); a != b {
			t.Fatalf("Clone differs:\n%s\n%s", a, b)
		}
		err := d.Validate()
		if err != nil {
			var se *SpecError
			if !errors.As(err, &se) || !errors.Is(err, ErrInvalidSpec) || len(se.Problems) == 0 {
				t.Fatalf("Validate = %#v, want a *SpecError with problems", err)
			}
			for _, p := range se.Problems {
				if p.Field == "" || p.Rule == "" {
					t.Fatalf("problem without field or rule: %+v", p)
				}
			}
			return
		}
		// A valid spec survives the registry's JSON round trip.
		b, merr := json.Marshal(d)
		if merr != nil {
			t.Fatalf("valid spec does not marshal: %v", merr)
		}
		var back Spec
		if uerr := json.Unmarshal(b, &back); uerr != nil {
			t.Fatalf("valid spec does not unmarshal: %v\n%s", uerr, b)
		}
		if verr := back.Validate(); verr != nil {
			t.Fatalf("valid spec is invalid after a JSON round trip: %v\n%s", verr, b)
		}
	})
}

func jsonOf(t *testing.T, s Spec) string {
	b, err := json.Marshal(s)
	if err != nil {
		// Only MMDS.Data can fail to marshal (it is raw JSON); Validate
		// refuses such a spec, so compare without it.
		if s.MMDS == nil {
			t.Fatalf("marshal: %v", err)
		}
		c := s.Clone()
		c.MMDS.Data = nil
		b, err = json.Marshal(c)
		if err != nil {
			t.Fatalf("marshal: %v", err)
		}
		return string(b) + " (data not JSON)"
	}
	return string(b)
}
