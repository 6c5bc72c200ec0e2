package server

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/mvm-dev/microvm/internal/fcstandin"
)

// referenceSpec is the validator as it was before the cache: the prepared
// document used as is (with descriptions, responses and every schema).
func referenceSpec(t testing.TB, dir, api string) *apiSpec {
	t.Helper()
	file := fcstandin.SpecFileLatest
	if api == fcstandin.APIv10 {
		file = fcstandin.SpecFileV10
	}
	path := filepath.Join(dir, file)
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	doc, err := prepareSpec(path, raw, api)
	if err != nil {
		t.Fatal(err)
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	s := &apiSpec{api: api, version: doc.Info.Version, ready: make(chan struct{}), doc: doc, router: router}
	close(s.ready)
	return s
}

// bodyCase is one request of the equivalence corpus.
type bodyCase struct{ method, path, body string }

// corpus generates good and bad bodies for every operation with a request
// body in doc: a complete valid body, the required fields only, each
// property removed, replaced by values of every JSON type, negative,
// fractional and out-of-enum values, unknown fields, at the top level and
// one level down, plus non-object bodies.
func corpus(doc *openapi3.T) []bodyCase {
	var out []bodyCase
	paths := doc.Paths.InMatchingOrder()
	sort.Strings(paths)
	for _, tmpl := range paths {
		item := doc.Paths.Value(tmpl)
		concrete := tmpl
		for strings.Contains(concrete, "{") {
			i, j := strings.Index(concrete, "{"), strings.Index(concrete, "}")
			concrete = concrete[:i] + "id0" + concrete[j+1:]
		}
		for method, op := range item.Operations() {
			if op.RequestBody == nil || op.RequestBody.Value == nil {
				continue
			}
			mt := op.RequestBody.Value.Content.Get("application/json")
			if mt == nil || mt.Schema == nil {
				continue
			}
			add := func(v any) {
				b, err := json.Marshal(v)
				if err != nil {
					panic(err)
				}
				out = append(out, bodyCase{method, concrete, string(b)})
			}
			for _, raw := range []string{`{}`, `[]`, `null`, `"x"`, `1`, `true`} {
				out = append(out, bodyCase{method, concrete, raw})
			}
			for _, v := range variants(mt.Schema.Value, 0) {
				add(v)
			}
		}
	}
	return out
}

// wrongValues are values of every JSON type, and some numbers serde rejects
// for unsigned fields.
var wrongValues = []any{"str", 1, -1, 1.5, 0, 4294967296, true, false, nil, map[string]any{}, []any{}, map[string]any{"zz": 1}, []any{"x"}, []any{1}}

// valid returns a value s accepts (as far as the schema says).
func valid(s *openapi3.Schema, full bool, depth int) any {
	if s == nil {
		return nil
	}
	if len(s.Enum) > 0 {
		return s.Enum[0]
	}
	switch {
	case s.Type.Is("string"):
		return "x"
	case s.Type.Is("integer"):
		if s.Min != nil && *s.Min > 1 {
			return *s.Min
		}
		return 1
	case s.Type.Is("number"):
		return 1.5
	case s.Type.Is("boolean"):
		return true
	case s.Type.Is("array"):
		if s.Items == nil || depth > 3 {
			return []any{}
		}
		return []any{valid(s.Items.Value, full, depth+1)}
	}
	obj := map[string]any{}
	if depth > 3 {
		return obj
	}
	for name, p := range s.Properties {
		if full || contains(s.Required, name) {
			obj[name] = valid(p.Value, full, depth+1)
		}
	}
	return obj
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// variants returns good and bad variations of a body for schema s.
func variants(s *openapi3.Schema, depth int) []any {
	full, _ := valid(s, true, depth).(map[string]any)
	min, _ := valid(s, false, depth).(map[string]any)
	if full == nil {
		return nil
	}
	out := []any{full, min}
	clone := func() map[string]any {
		c := map[string]any{}
		for k, v := range full {
			c[k] = v
		}
		return c
	}
	u := clone()
	u["zz_unknown"] = 1
	out = append(out, u)
	names := make([]string, 0, len(s.Properties))
	for n := range s.Properties {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := clone()
		delete(c, n)
		out = append(out, c)
		for _, w := range wrongValues {
			c := clone()
			c[n] = w
			out = append(out, c)
		}
		p := s.Properties[n].Value
		if p != nil && len(p.Enum) > 0 {
			c := clone()
			c[n] = "NotAVariant"
			out = append(out, c)
		}
		if p != nil && p.Type.Is("array") && p.Items != nil {
			for _, w := range wrongValues {
				c := clone()
				c[n] = []any{w}
				out = append(out, c)
			}
		}
		if depth < 2 && p != nil && len(p.Properties) > 0 {
			for _, sub := range variants(p, depth+1) {
				c := clone()
				c[n] = sub
				out = append(out, c)
			}
		}
		if depth < 2 && p != nil && p.Type.Is("array") && p.Items != nil && p.Items.Value != nil && len(p.Items.Value.Properties) > 0 {
			for _, sub := range variants(p.Items.Value, depth+1) {
				c := clone()
				c[n] = []any{sub}
				out = append(out, c)
			}
		}
	}
	return out
}

// TestSpecCacheEquivalent checks that the validator document, cached or
// not, decides every body of a generated corpus exactly like the unpruned
// prepared document (the stand-in's validator before the cache), with the
// same messages, and routes the same requests.
func TestSpecCacheEquivalent(t *testing.T) {
	dir := fcstandin.SpecDir(t)
	for _, api := range []string{fcstandin.APILatest, fcstandin.APIv10} {
		t.Run(api, func(t *testing.T) {
			ref := referenceSpec(t, dir, api)
			cache := specCache{dir: t.TempDir(), buildID: "test"}
			miss, err := loadSpec(dir, api, cache)
			if err != nil {
				t.Fatal(err)
			}
			hit, err := loadSpec(dir, api, cache)
			if err != nil {
				t.Fatal(err)
			}
			plain, err := loadSpec(dir, api, specCache{})
			if err != nil {
				t.Fatal(err)
			}
			if miss.cached || !hit.cached || plain.cached {
				t.Fatalf("cached: miss %v hit %v plain %v", miss.cached, hit.cached, plain.cached)
			}
			for _, s := range []*apiSpec{miss, hit, plain} {
				if s.version != ref.version {
					t.Fatalf("version %q, want %q", s.version, ref.version)
				}
			}
			cases := corpus(ref.doc)
			if len(cases) < 500 {
				t.Fatalf("corpus has only %d bodies", len(cases))
			}
			// Hand-written bodies from the other tests' territory.
			cases = append(cases,
				bodyCase{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"foo":1}`},
				bodyCase{"PATCH", "/machine-config", `{"bogus":true}`},
				bodyCase{"PUT", "/logger", `{"level":"Off"}`},
				bodyCase{"PUT", "/logger", `{"level":"loud"}`},
				bodyCase{"PUT", "/drives/a", `{"drive_id":"a","path_on_host":"r","is_root_device":true,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":1,"refill_time":1,"future":2}}}`},
				bodyCase{"PUT", "/drives/a", `{"drive_id":"a","path_on_host":"r","is_root_device":true,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":1,"refill_time":1},"extra":1}}`},
				bodyCase{"PUT", "/cpu-config", `{"vcpu_features":[]}`},
				bodyCase{"PUT", "/mmds/config", `{"network_interfaces":["eth0"],"ipv4_address":"not-an-ip"}`},
				bodyCase{"PUT", "/mmds", `{"any":{"thing":[1,2,3]}}`},
				bodyCase{"PATCH", "/mmds", `{"a":1}`},
				bodyCase{"PUT", "/nope", `{}`},
			)
			bad := 0
			for _, c := range cases {
				want := ref.validateBody(c.method, c.path, []byte(c.body))
				if want != "" {
					bad++
				}
				for name, s := range map[string]*apiSpec{"miss": miss, "hit": hit, "uncached": plain} {
					if got := s.validateBody(c.method, c.path, []byte(c.body)); got != want {
						t.Errorf("%s: %s %s %s:\n got %q\nwant %q", name, c.method, c.path, c.body, got, want)
					}
				}
			}
			if bad == 0 || bad == len(cases) {
				t.Fatalf("corpus of %d bodies has %d rejected: not a useful mix", len(cases), bad)
			}
			t.Logf("%s: %d bodies, %d rejected, all decided alike", api, len(cases), bad)
			// Routing: every path template with each method, plus strays.
			var routes []bodyCase
			for _, tmpl := range ref.doc.Paths.InMatchingOrder() {
				p := strings.NewReplacer("{", "", "}", "").Replace(tmpl)
				for _, m := range []string{"GET", "PUT", "PATCH", "DELETE", "POST"} {
					routes = append(routes, bodyCase{m, p, ""}, bodyCase{m, p + "/extra", ""})
				}
			}
			routes = append(routes, bodyCase{"GET", "/", ""}, bodyCase{"GET", "/nope", ""}, bodyCase{"PATCH", "/balloon/statistics", ""}, bodyCase{"PATCH", "/balloon/hinting/start", ""})
			for _, r := range routes {
				want := ref.hasRoute(r.method, r.path)
				for name, s := range map[string]*apiSpec{"miss": miss, "hit": hit, "uncached": plain} {
					if got := s.hasRoute(r.method, r.path); got != want {
						t.Errorf("%s: hasRoute(%s %s) = %v, want %v", name, r.method, r.path, got, want)
					}
				}
			}
		})
	}
}

// TestValidatorDocumentDecoding checks that the piecewise decoding of a
// validator document gives the document kin-openapi's decoder gives.
func TestValidatorDocumentDecoding(t *testing.T) {
	dir := fcstandin.SpecDir(t)
	for _, api := range []string{fcstandin.APILatest, fcstandin.APIv10} {
		ref := referenceSpec(t, dir, api)
		full, err := json.Marshal(ref.doc)
		if err != nil {
			t.Fatal(err)
		}
		small, err := validatorDocument(full)
		if err != nil {
			t.Fatal(err)
		}
		if len(small) >= len(full) {
			t.Errorf("%s: validator document %d bytes, full %d", api, len(small), len(full))
		}
		for name, js := range map[string][]byte{"validator": small, "full": full} {
			fast, err := decodeValidatorDocument(js)
			if err != nil {
				t.Fatalf("%s %s: %v", api, name, err)
			}
			var slow openapi3.T
			if err := json.Unmarshal(js, &slow); err != nil {
				t.Fatal(err)
			}
			a, _ := json.Marshal(fast)
			b, _ := json.Marshal(&slow)
			if !bytes.Equal(a, b) {
				t.Errorf("%s %s: piecewise decoding differs:\n%s\n%s", api, name, a, b)
			}
		}
		// Nothing a request body can reach is dropped.
		var doc map[string]any
		json.Unmarshal(small, &doc)
		for _, ref := range refs(doc, nil) {
			name := strings.TrimPrefix(ref, "#/components/schemas/")
			if _, ok := doc["components"].(map[string]any)["schemas"].(map[string]any)[name]; !ok {
				t.Errorf("%s: %s dangles", api, ref)
			}
		}
		if strings.Contains(string(small), `"description"`) || strings.Contains(string(small), `"responses"`) {
			t.Errorf("%s: validator document keeps documentation: %s", api, small)
		}
	}
}

// TestSpecCacheEntries covers the cache's life: miss and write, hit,
// damaged entries, other spec bytes or build, and a missing spec.
func TestSpecCacheEntries(t *testing.T) {
	ref := fcstandin.SpecDir(t)
	dir := t.TempDir()
	for _, f := range []string{fcstandin.SpecFileLatest, fcstandin.SpecFileV10} {
		b, err := os.ReadFile(filepath.Join(ref, f))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cacheDir := t.TempDir()
	cache := specCache{dir: cacheDir, buildID: "build-1"}
	entries := func() []string {
		t.Helper()
		m, _ := filepath.Glob(filepath.Join(cacheDir, "*"))
		all, _ := filepath.Glob(filepath.Join(cacheDir, ".*"))
		return append(m, all...)
	}
	load := func(c specCache) *apiSpec {
		t.Helper()
		s, err := loadSpec(dir, fcstandin.APILatest, c)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	if s := load(cache); s.cached {
		t.Fatal("first load came from the cache")
	}
	es := entries()
	if len(es) != 1 || !strings.HasPrefix(filepath.Base(es[0]), fcstandin.APILatest+"-") {
		t.Fatalf("entries after a miss: %v", es)
	}
	entry := es[0]
	b, _ := os.ReadFile(entry)
	if !strings.HasPrefix(string(b), specCacheFormat+" ") || !strings.Contains(strings.SplitN(string(b), "\n", 2)[0], `"1.17.0-dev"`) {
		t.Fatalf("entry header: %.120q", b)
	}
	if s := load(cache); !s.cached || s.version != "1.17.0-dev" {
		t.Fatalf("second load: cached %v version %q", s.cached, s.version)
	}

	// Damaged entries are not used, and are rewritten.
	for name, damage := range map[string]func([]byte) []byte{
		"truncated": func(b []byte) []byte { return b[:len(b)/2] },
		"flipped":   func(b []byte) []byte { c := bytes.Clone(b); c[len(c)-10] ^= 1; return c },
		"version":   func(b []byte) []byte { return bytes.Replace(b, []byte(`"1.17.0-dev"`), []byte(`"9.9.9"`), 1) },
		"format": func(b []byte) []byte {
			return bytes.Replace(b, []byte(specCacheFormat), []byte("fcstandin-spec-cache/0"), 1)
		},
		"empty": func([]byte) []byte { return nil },
	} {
		if err := os.WriteFile(entry, damage(b), 0o644); err != nil {
			t.Fatal(err)
		}
		if s := load(cache); s.cached {
			t.Fatalf("%s entry was used", name)
		}
		if got, _ := os.ReadFile(entry); !bytes.Equal(got, b) {
			t.Fatalf("%s entry was not rewritten", name)
		}
	}
	// An entry that checks out but does not decode: rebuilt in the
	// background, and the validator still works.
	bogus := []byte(`{"openapi": 3}`)
	if err := cache.write(entry, "1.17.0-dev", bogus); err != nil {
		t.Fatal(err)
	}
	s := load(cache)
	if s.cached {
		t.Fatal("undecodable entry reported as cached")
	}
	if msg := s.validateBody("PUT", "/machine-config", []byte(`{"vcpu_count":1}`)); !strings.Contains(msg, "missing field `mem_size_mib`") {
		t.Fatalf("after rebuild: %q", msg)
	}
	if got, _ := os.ReadFile(entry); !bytes.Equal(got, b) {
		t.Fatal("undecodable entry was not rewritten")
	}

	// Other spec bytes or another build: another entry.
	latest := filepath.Join(dir, fcstandin.SpecFileLatest)
	orig, _ := os.ReadFile(latest)
	edited := bytes.Replace(orig, []byte("description:"), []byte("description: edited"), 1)
	if bytes.Equal(edited, orig) {
		t.Fatal("could not edit the spec")
	}
	os.WriteFile(latest, edited, 0o644)
	if s := load(cache); s.cached {
		t.Fatal("edited spec used the old entry")
	}
	os.WriteFile(latest, orig, 0o644)
	if s := load(specCache{dir: cacheDir, buildID: "build-2"}); s.cached {
		t.Fatal("another build used the old entry")
	}
	if n := len(entries()); n != 3 {
		t.Fatalf("%d entries, want 3: %v", n, entries())
	}
	if s := load(cache); !s.cached {
		t.Fatal("original spec no longer cached")
	}

	// The spec stays a hard requirement.
	os.Remove(latest)
	if _, err := loadSpec(dir, fcstandin.APILatest, cache); err == nil || !strings.Contains(err.Error(), "read spec") {
		t.Fatalf("missing spec with a cache entry: %v", err)
	}

	// An unusable cache folder only costs time.
	os.WriteFile(latest, orig, 0o644)
	notDir := filepath.Join(t.TempDir(), "file")
	os.WriteFile(notDir, nil, 0o644)
	if s := load(specCache{dir: notDir, buildID: "build-1"}); s.cached || s.version == "" {
		t.Fatalf("unusable cache folder: %+v", s)
	}
	// Nothing half-written is left behind.
	for _, e := range entries() {
		if strings.HasPrefix(filepath.Base(e), ".tmp-") {
			t.Fatalf("temporary file left: %s", e)
		}
	}
}

// TestSpecCacheBackgroundFailure: when a cached document cannot be loaded
// and the spec cannot be prepared either, requests get a fault (never pass
// unvalidated) and the failure is reported.
func TestSpecCacheBackgroundFailure(t *testing.T) {
	dir := t.TempDir()
	broken := []byte("swagger: '2.0'\ninfo: [not, a, map\n")
	for _, f := range []string{fcstandin.SpecFileLatest, fcstandin.SpecFileV10} {
		os.WriteFile(filepath.Join(dir, f), broken, 0o644)
	}
	if _, err := loadSpec(dir, fcstandin.APILatest, specCache{}); err == nil {
		t.Fatal("broken spec loaded")
	}
	cache := specCache{dir: t.TempDir(), buildID: "b"}
	if err := cache.write(cache.entryPath(fcstandin.APILatest, broken), "1.17.0-dev", []byte(`{"openapi": 3}`)); err != nil {
		t.Fatal(err)
	}
	failed := make(chan error, 1)
	s, err := openSpec(dir, fcstandin.APILatest, cache, func(err error) { failed <- err })
	if err != nil {
		t.Fatal(err)
	}
	if s.version != "1.17.0-dev" {
		t.Fatalf("version %q", s.version)
	}
	if msg := s.validateBody("PUT", "/machine-config", []byte(`{}`)); !strings.Contains(msg, "unavailable") {
		t.Fatalf("request with no validator: %q", msg)
	}
	if s.hasRoute("GET", "/machine-config") {
		t.Fatal("route found with no validator")
	}
	if err := <-failed; err == nil || !strings.Contains(err.Error(), fcstandin.SpecFileLatest) {
		t.Fatalf("failure report: %v", err)
	}
}

// TestSpecCacheProcess runs the stand-in with a cache folder: the first
// start fills it, the next ones use it, and both validate alike.
func TestSpecCacheProcess(t *testing.T) {
	cacheDir := t.TempDir()
	env := []string{"FCSTANDIN_SPEC_CACHE=" + cacheDir}
	var msgs []string
	for i := 0; i < 2; i++ {
		p := startFC(t, startOpt{env: env})
		_, body, _ := p.do("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"foo":1}`)
		msgs = append(msgs, body)
		p.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`)
		if m, _ := filepath.Glob(filepath.Join(cacheDir, fcstandin.APILatest+"-*.json")); len(m) != 1 {
			t.Fatalf("start %d: cache entries %v", i, m)
		}
	}
	if msgs[0] != msgs[1] || !strings.Contains(msgs[0], "unknown field `foo`") {
		t.Fatalf("cold and warm starts answer differently: %q", msgs)
	}
	// off: nothing written; relative folders are refused.
	offDir := t.TempDir()
	p := startFC(t, startOpt{env: []string{"FCSTANDIN_SPEC_CACHE=off", "XDG_CACHE_HOME=" + offDir, "HOME=" + offDir}})
	p.fails("PUT", "/machine-config", `{"vcpu_count":1}`, "missing field `mem_size_mib`")
	if m, _ := filepath.Glob(filepath.Join(offDir, "*")); len(m) != 0 {
		t.Fatalf("FCSTANDIN_SPEC_CACHE=off wrote %v", m)
	}
	cmd := exec.Command(fcstandin.Build(t), "--api-sock", filepath.Join(shortDir(t), "s"))
	cmd.Env = append(os.Environ(), "FCSTANDIN_SPEC_DIR="+fcstandin.SpecDir(t), "FCSTANDIN_SPEC_CACHE=rel/dir")
	out, err := cmd.CombinedOutput()
	if cmd.ProcessState.ExitCode() != 1 || !strings.Contains(string(out), "FCSTANDIN_SPEC_CACHE") {
		t.Fatalf("relative cache folder: %v %s", err, out)
	}
}

func TestGoBuildID(t *testing.T) {
	bin := fcstandin.Build(t)
	id, err := goBuildID(bin)
	if err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(filepath.Join(runtime.GOROOT(), "bin", "go"), "tool", "buildid", bin).Output()
	if err != nil {
		t.Skipf("go tool buildid: %v", err)
	}
	if want := strings.TrimSpace(string(out)); id != want {
		t.Fatalf("build ID %q, go tool buildid says %q", id, want)
	}
	if _, err := goBuildID(filepath.Join(fcstandin.SpecDir(t), fcstandin.SpecFileLatest)); err == nil {
		t.Fatal("build ID of a YAML file")
	}
	if executableBuildID() == "" {
		t.Fatal("no build ID for the test binary")
	}
}
