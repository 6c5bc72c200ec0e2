package server

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"

	"github.com/getkin/kin-openapi/openapi2"
	"github.com/getkin/kin-openapi/openapi2conv"
	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/gorillamux"
	"github.com/mvm-dev/microvm/internal/fcstandin"
	"sigs.k8s.io/yaml"
)

// strictDefinitions are the body types whose Rust structs use
// #[serde(deny_unknown_fields)] (notes §2 "Bodies that reject unknown
// fields"). Definitions missing from a spec version are skipped. Metrics,
// TokenBucket, NetworkOverride, VsockOverride, BalloonStartCmd and the MMDS
// payload stay lenient.
var strictDefinitions = []string{
	"InstanceActionInfo", "BootSource", "MachineConfiguration", "MachineConfigUpdate",
	"Drive", "PartialDrive", "NetworkInterface", "PartialNetworkInterface", "Pmem",
	"PartialPmem", "Vsock", "Balloon", "BalloonUpdate", "BalloonStatsUpdate",
	"EntropyDevice", "SerialDevice", "MemoryHotplugConfig", "MemoryHotplugSizeUpdate",
	"Logger", "MmdsConfig", "SnapshotCreateParams", "SnapshotLoadParams", "MemoryBackend",
	"Vm", "RateLimiter", "CpuConfig", "CpuidLeafModifier", "CpuidRegisterModifier",
	"MsrModifier", "ArmRegisterModifier", "VcpuFeatures",
}

// apiSpec is a loaded, tightened spec with its router. The document may
// still be loading in the background (see openSpec): hasRoute and
// validateBody wait for it.
type apiSpec struct {
	api     string
	version string // info.version, e.g. "1.0.0" or "1.17.0-dev"
	cached  bool   // the document came from the spec cache

	ready  chan struct{} // closed once doc and router, or err, are set
	doc    *openapi3.T
	router routers.Router
	err    error // the document could not be loaded
}

// wait blocks until the document is loaded and returns the loading error.
func (s *apiSpec) wait() error {
	<-s.ready
	return s.err
}

// loadSpec reads the spec for api from dir and returns the loaded
// validator for it (see openSpec).
func loadSpec(dir, api string, cache specCache) (*apiSpec, error) {
	s, err := openSpec(dir, api, cache, nil)
	if err != nil {
		return nil, err
	}
	if err := s.wait(); err != nil {
		return nil, err
	}
	return s, nil
}

// openSpec reads the spec for api from dir and returns the validator for
// it: the spec converted to OpenAPI 3, tightened to what Firecracker's code
// enforces and reduced to what request validation reads (see
// speccache.go). The spec file is read and hashed on every call.
//
// When cache holds the prepared document for these spec bytes, openSpec
// returns at once with the version and decodes the document in the
// background; should that fail, the document is prepared again from the
// spec, and if that fails too, failed (when not nil) is called with the
// error after every waiter has been released. Otherwise the document is
// prepared, stored in cache, and loaded before openSpec returns.
func openSpec(dir, api string, cache specCache, failed func(error)) (*apiSpec, error) {
	file := fcstandin.SpecFileLatest
	if api == fcstandin.APIv10 {
		file = fcstandin.SpecFileV10
	}
	path := filepath.Join(dir, file)
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read spec: %w", err)
	}
	s := &apiSpec{api: api, ready: make(chan struct{})}
	entry := ""
	if cache.enabled() {
		entry = cache.entryPath(api, raw)
		if version, js, err := cache.read(entry); err == nil {
			s.version, s.cached = version, true
			go func() {
				if err := s.setJSON(js); err != nil {
					// Not loadable after all: start from the spec again.
					s.cached = false
					s.err = s.prepare(path, raw, cache, entry)
				}
				close(s.ready)
				if s.err != nil && failed != nil {
					failed(s.err)
				}
			}()
			return s, nil
		}
	}
	if err := s.prepare(path, raw, cache, entry); err != nil {
		return nil, err
	}
	close(s.ready)
	return s, nil
}

// prepare builds s's document from the spec bytes raw (read from path)
// and stores it in cache under entry ("": not cached).
func (s *apiSpec) prepare(path string, raw []byte, cache specCache, entry string) error {
	doc3, err := prepareSpec(path, raw, s.api)
	if err != nil {
		return err
	}
	full, err := json.Marshal(doc3)
	if err != nil {
		return fmt.Errorf("spec %s: %w", path, err)
	}
	js, err := validatorDocument(full)
	if err != nil {
		js = full // unexpected shape: validate against the whole document
	}
	// Validate against the document decoded from js, as a cache hit would.
	if err := s.setJSON(js); err != nil {
		return fmt.Errorf("spec %s: %w", path, err)
	}
	if s.version != doc3.Info.Version {
		return fmt.Errorf("spec %s: info.version %q read back as %q", path, doc3.Info.Version, s.version)
	}
	if entry != "" {
		cache.write(entry, s.version, js) // best effort: the cache only saves time
	}
	return nil
}

// setJSON decodes the JSON of a prepared OpenAPI 3 document into s's
// document and router. A version already set must match the document's.
func (s *apiSpec) setJSON(js []byte) error {
	doc, err := decodeValidatorDocument(js)
	if err != nil {
		return fmt.Errorf("openapi3: %w", err)
	}
	if err := openapi3.NewLoader().ResolveRefsIn(doc, nil); err != nil {
		return fmt.Errorf("openapi3: %w", err)
	}
	if doc.Info == nil || doc.Info.Version == "" {
		return errors.New("info.version is empty")
	}
	if s.version != "" && s.version != doc.Info.Version {
		return fmt.Errorf("info.version is %q, want %q", doc.Info.Version, s.version)
	}
	router, err := gorillamux.NewRouter(doc)
	if err != nil {
		return fmt.Errorf("router: %w", err)
	}
	if s.version == "" {
		s.version = doc.Info.Version
	}
	s.doc, s.router = doc, router
	return nil
}

// prepareSpec converts the Swagger 2.0 YAML raw (read from path) to OpenAPI
// 3 and tightens it to what Firecracker's code enforces.
func prepareSpec(path string, raw []byte, api string) (*openapi3.T, error) {
	js, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("parse spec %s: %w", path, err)
	}
	var m map[string]any
	if err := json.Unmarshal(js, &m); err != nil {
		return nil, fmt.Errorf("parse spec %s: %w", path, err)
	}
	if err := tightenSpec(m, api); err != nil {
		return nil, fmt.Errorf("spec %s: %w", path, err)
	}
	js, err = json.Marshal(m)
	if err != nil {
		return nil, fmt.Errorf("spec %s: %w", path, err)
	}
	var doc2 openapi2.T
	if err := json.Unmarshal(js, &doc2); err != nil {
		return nil, fmt.Errorf("spec %s: openapi2: %w", path, err)
	}
	doc3, err := openapi2conv.ToV3(&doc2)
	if err != nil {
		return nil, fmt.Errorf("spec %s: convert to openapi3: %w", path, err)
	}
	if doc3.Info == nil || doc3.Info.Version == "" {
		return nil, fmt.Errorf("spec %s: info.version is empty", path)
	}
	return doc3, nil
}

// tightenSpec edits the swagger document (as generic JSON) so that schema
// validation rejects what Firecracker's serde structs reject.
func tightenSpec(m map[string]any, api string) error {
	defs, _ := m["definitions"].(map[string]any)
	if defs == nil {
		return errors.New("no definitions")
	}
	def := func(name string) map[string]any { d, _ := defs[name].(map[string]any); return d }
	props := func(d map[string]any) map[string]any {
		if d == nil {
			return nil
		}
		p, _ := d["properties"].(map[string]any)
		return p
	}

	// Logger.level: YAML 1.1 reads "Off" as false (notes §16.10) and the code
	// parses the level case-insensitively; the handler checks it instead.
	if p := props(def("Logger")); p != nil {
		if lvl, ok := p["level"].(map[string]any); ok {
			if api == fcstandin.APILatest {
				delete(lvl, "enum")
			} else if enum, ok := lvl["enum"].([]any); ok {
				for i, v := range enum {
					if b, ok := v.(bool); ok && !b {
						enum[i] = "Off"
					}
				}
			}
		}
	}
	// vcpu_count range gets Firecracker's own message from the handler.
	if p := props(def("MachineConfiguration")); p != nil {
		if v, ok := p["vcpu_count"].(map[string]any); ok {
			delete(v, "minimum")
			delete(v, "maximum")
		}
	}
	// PATCH /machine-config deserializes MachineConfigUpdate (all optional),
	// although the swagger reuses MachineConfiguration.
	if mc := def("MachineConfiguration"); mc != nil {
		cp, err := deepCopy(mc)
		if err != nil {
			return err
		}
		delete(cp, "required")
		defs["MachineConfigUpdate"] = cp
		if paths, ok := m["paths"].(map[string]any); ok {
			if pi, ok := paths["/machine-config"].(map[string]any); ok {
				if op, ok := pi["patch"].(map[string]any); ok {
					if params, ok := op["parameters"].([]any); ok {
						for _, p := range params {
							if pm, ok := p.(map[string]any); ok && pm["in"] == "body" {
								pm["schema"] = map[string]any{"$ref": "#/definitions/MachineConfigUpdate"}
							}
						}
					}
				}
			}
		}
	}
	// The stand-in is an x86_64 Firecracker: aarch64 template fields are
	// unknown fields there.
	if p := props(def("CpuConfig")); p != nil {
		delete(p, "reg_modifiers")
		delete(p, "vcpu_features")
	}
	// The ipv4 "format" is a regex, not a JSON-schema format; checked by hand.
	if p := props(def("MmdsConfig")); p != nil {
		if v, ok := p["ipv4_address"].(map[string]any); ok {
			delete(v, "format")
		}
	}
	// Required in code although not in swagger (notes §16.9).
	if d := def("MemoryHotplugConfig"); d != nil {
		d["required"] = []any{"total_size_mib"}
	}
	if d := def("MemoryHotplugSizeUpdate"); d != nil {
		d["required"] = []any{"requested_size_mib"}
	}
	// Every integer in Firecracker's bodies is unsigned.
	for _, d := range defs {
		walkSchemas(d, func(s map[string]any) {
			if s["type"] == "integer" {
				if _, ok := s["minimum"]; !ok {
					s["minimum"] = 0
				}
			}
		})
	}
	for _, name := range strictDefinitions {
		if d := def(name); d != nil {
			d["additionalProperties"] = false
		}
	}
	return nil
}

func walkSchemas(v any, fn func(map[string]any)) {
	s, ok := v.(map[string]any)
	if !ok {
		return
	}
	fn(s)
	if p, ok := s["properties"].(map[string]any); ok {
		for _, c := range p {
			walkSchemas(c, fn)
		}
	}
	if it, ok := s["items"]; ok {
		walkSchemas(it, fn)
	}
}

func deepCopy(m map[string]any) (map[string]any, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return nil, err
	}
	var out map[string]any
	err = json.Unmarshal(b, &out)
	return out, err
}

// hasRoute reports whether the spec has an operation for method on the
// concrete path (e.g. "/drives/rootfs").
func (s *apiSpec) hasRoute(method, path string) bool {
	_, _, _, err := s.findRoute(method, path, nil)
	return err == nil
}

func (s *apiSpec) findRoute(method, path string, body []byte) (*http.Request, *routers.Route, map[string]string, error) {
	if err := s.wait(); err != nil {
		return nil, nil, nil, err
	}
	req, err := http.NewRequest(method, "http://localhost"+path, bytes.NewReader(body))
	if err != nil {
		return nil, nil, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	route, params, err := s.router.FindRoute(req)
	if err != nil {
		return nil, nil, nil, err
	}
	return req, route, params, nil
}

// validateBody validates body against the operation's body schema and
// returns a serde-style message ("" when valid).
func (s *apiSpec) validateBody(method, path string, body []byte) string {
	if err := s.wait(); err != nil {
		return "the API specification is unavailable: " + err.Error()
	}
	req, route, params, err := s.findRoute(method, path, body)
	if err != nil {
		return ""
	}
	if route.Operation == nil || route.Operation.RequestBody == nil || route.Operation.RequestBody.Value == nil {
		return ""
	}
	in := &openapi3filter.RequestValidationInput{
		Request:    req,
		PathParams: params,
		Route:      route,
		Options:    &openapi3filter.Options{SkipSettingDefaults: true, ExcludeReadOnlyValidations: true},
	}
	err = openapi3filter.ValidateRequestBody(context.Background(), in, route.Operation.RequestBody.Value)
	if err == nil {
		return ""
	}
	return serdeMessage(err)
}

var quotedName = regexp.MustCompile(`property "([^"]*)"`)

// serdeMessage renders a kin-openapi validation error the way serde_json
// would describe the same problem.
func serdeMessage(err error) string {
	var se *openapi3.SchemaError
	if !errors.As(err, &se) {
		var re *openapi3filter.RequestError
		if errors.As(err, &re) && re.Err != nil {
			return re.Err.Error()
		}
		return err.Error()
	}
	name := ""
	if m := quotedName.FindStringSubmatch(se.Reason); m != nil {
		name = m[1]
	}
	switch se.SchemaField {
	case "additionalProperties", "properties":
		if strings.Contains(se.Reason, "is unsupported") {
			return fmt.Sprintf("unknown field `%s`, expected %s%s", name, oneOf(fieldNames(se.Schema)), where(se.JSONPointer()))
		}
		return fmt.Sprintf("%s (at %s)", se.Reason, pointer(se))
	case "required":
		p := se.JSONPointer()
		if len(p) > 0 {
			p = p[:len(p)-1]
		}
		return fmt.Sprintf("missing field `%s`%s", name, where(p))
	case "enum":
		var variants []string
		if se.Schema != nil {
			for _, e := range se.Schema.Enum {
				variants = append(variants, fmt.Sprint(e))
			}
		}
		return fmt.Sprintf("unknown variant `%v`, expected %s", se.Value, oneOf(variants))
	case "type":
		want := "value"
		if se.Schema != nil && se.Schema.Type != nil && len(*se.Schema.Type) > 0 {
			want = (*se.Schema.Type)[0]
		}
		return fmt.Sprintf("invalid type: %s, expected %s (at %s)", describeJSON(se.Value), want, pointer(se))
	case "minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum":
		return fmt.Sprintf("invalid value: %s, expected %s (at %s)", describeJSON(se.Value), strings.TrimPrefix(se.Reason, "number "), pointer(se))
	default:
		return fmt.Sprintf("%s (at %s)", se.Reason, pointer(se))
	}
}

func pointer(se *openapi3.SchemaError) string {
	p := se.JSONPointer()
	if len(p) == 0 {
		return "top level"
	}
	return "`" + strings.Join(p, ".") + "`"
}

func where(p []string) string {
	if len(p) == 0 {
		return ""
	}
	return " in `" + strings.Join(p, ".") + "`"
}

func fieldNames(s *openapi3.Schema) []string {
	if s == nil {
		return nil
	}
	var names []string
	for k := range s.Properties {
		names = append(names, k)
	}
	sort.Strings(names)
	return names
}

func oneOf(names []string) string {
	switch len(names) {
	case 0:
		return "no fields"
	case 1:
		return "`" + names[0] + "`"
	}
	q := make([]string, len(names))
	for i, n := range names {
		q[i] = "`" + n + "`"
	}
	return "one of " + strings.Join(q, ", ")
}

func describeJSON(v any) string {
	switch x := v.(type) {
	case nil:
		return "null"
	case bool:
		return fmt.Sprintf("boolean `%v`", x)
	case float64:
		if x == float64(int64(x)) {
			return fmt.Sprintf("integer `%d`", int64(x))
		}
		return fmt.Sprintf("floating point `%v`", x)
	case json.Number:
		return fmt.Sprintf("integer `%s`", x)
	case string:
		return fmt.Sprintf("string %q", x)
	case []any:
		return "sequence"
	case map[string]any:
		return "map"
	}
	return fmt.Sprintf("%v", v)
}

// jsonSyntaxMessage describes a JSON syntax error like serde_json does
// ("... at line L column C").
func jsonSyntaxMessage(body []byte, err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		line, col := lineCol(body, int(se.Offset))
		return fmt.Sprintf("%s at line %d column %d", se.Error(), line, col)
	}
	if errors.Is(err, io.ErrUnexpectedEOF) {
		line, col := lineCol(body, len(body))
		return fmt.Sprintf("EOF while parsing a value at line %d column %d", line, col)
	}
	return err.Error()
}

func lineCol(b []byte, off int) (int, int) {
	if off > len(b) {
		off = len(b)
	}
	line, col := 1, 0
	for _, c := range b[:off] {
		if c == '\n' {
			line++
			col = 0
		} else {
			col++
		}
	}
	return line, col
}
