package server

import (
	"bytes"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
)

// The validator document cache.
//
// Turning the Swagger 2.0 YAML into a tightened OpenAPI 3 document costs
// most of the stand-in's start-up CPU (YAML parsing, two JSON round trips,
// openapi2 decoding, conversion). The result depends only on the spec
// bytes, the emulated API and the stand-in's code, so it is kept on disk as
// the JSON of a "validator document": the prepared document with what
// request validation never reads (descriptions, examples, responses,
// schemas reachable only from responses) left out. Every start, cached or
// not, builds its router and validator from such JSON, so a hit and a miss
// validate identically; TestSpecCacheEquivalent checks that the validator
// document decides every body like the unpruned prepared document does.
//
// The spec file is still read and hashed on every start. A cache entry is
// keyed by the sha256 of the spec bytes, the API flavour, specCacheFormat
// and the Go build ID of the running executable (which changes with any
// change to the stand-in's code or its dependencies); without a build ID
// nothing is cached. Entries are written atomically (temporary file, then
// rename) and carry a checksum of their payload; an entry that does not
// check out or does not load is rebuilt.

// specCacheFormat names the layout of cache entries and of the validator
// document. Change it whenever either changes.
const specCacheFormat = "fcstandin-spec-cache/1"

// specCacheMaxAge is how long an unused-for-writing entry is kept: entries
// older than this are removed whenever a new one is written.
const specCacheMaxAge = 7 * 24 * time.Hour

// specCache says where validator documents are cached. The zero value
// disables caching.
type specCache struct {
	dir     string // cache directory; "" disables the cache
	buildID string // Go build ID of the code preparing the documents
}

func (c specCache) enabled() bool { return c.dir != "" && c.buildID != "" }

// entryPath returns the cache file for the spec bytes raw of flavour api.
func (c specCache) entryPath(api string, raw []byte) string {
	specSum := sha256.Sum256(raw)
	h := sha256.New()
	for _, part := range []string{specCacheFormat, api, c.buildID, hex.EncodeToString(specSum[:])} {
		h.Write([]byte(part))
		h.Write([]byte{0})
	}
	return filepath.Join(c.dir, api+"-"+hex.EncodeToString(h.Sum(nil))+".json")
}

// errCacheEntry marks a cache entry that is damaged or of another format.
var errCacheEntry = errors.New("bad spec cache entry")

// An entry is one header line, `<specCacheFormat> <checksum> <quoted
// info.version>`, then the payload: the validator document's JSON. The
// checksum is the sha256 of the quoted version, a newline and the payload.

// entrySum is the checksum of an entry.
func entrySum(quotedVersion string, payload []byte) string {
	h := sha256.New()
	h.Write([]byte(quotedVersion))
	h.Write([]byte{'\n'})
	h.Write(payload)
	return hex.EncodeToString(h.Sum(nil))
}

// read returns the spec version and the payload of the entry at path.
func (c specCache) read(path string) (version string, payload []byte, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return "", nil, err
	}
	header, payload, ok := bytes.Cut(b, []byte{'\n'})
	if !ok {
		return "", nil, fmt.Errorf("%s: %w: no header line", path, errCacheEntry)
	}
	fields := strings.SplitN(string(header), " ", 3)
	if len(fields) != 3 || fields[0] != specCacheFormat {
		return "", nil, fmt.Errorf("%s: %w: header %q, want %q, checksum, version", path, errCacheEntry, header, specCacheFormat)
	}
	if fields[1] != entrySum(fields[2], payload) {
		return "", nil, fmt.Errorf("%s: %w: checksum mismatch", path, errCacheEntry)
	}
	version, err = strconv.Unquote(fields[2])
	if err != nil || version == "" {
		return "", nil, fmt.Errorf("%s: %w: bad version %s", path, errCacheEntry, fields[2])
	}
	return version, payload, nil
}

// write stores the payload for spec version at path atomically and
// removes stale entries.
func (c specCache) write(path, version string, payload []byte) error {
	quoted := strconv.Quote(version)
	f, err := os.CreateTemp(c.dir, ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	_, err = fmt.Fprintf(f, "%s %s %s\n", specCacheFormat, entrySum(quoted, payload), quoted)
	if err == nil {
		_, err = f.Write(payload)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Chmod(tmp, 0o644)
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	c.prune(path)
	return nil
}

// prune removes entries older than specCacheMaxAge and temporary files
// left behind by killed writers, except keep.
func (c specCache) prune(keep string) {
	ents, err := os.ReadDir(c.dir)
	if err != nil {
		return
	}
	now := time.Now()
	for _, e := range ents {
		name := e.Name()
		maxAge := specCacheMaxAge
		switch {
		case strings.HasPrefix(name, ".tmp-"):
			maxAge = time.Hour
		case strings.HasSuffix(name, ".json"):
		default:
			continue
		}
		p := filepath.Join(c.dir, name)
		if p == keep {
			continue
		}
		if info, err := e.Info(); err == nil && info.Mode().IsRegular() && now.Sub(info.ModTime()) > maxAge {
			os.Remove(p)
		}
	}
}

// defaultSpecCache returns the cache for this process: the directory from
// setting (FCSTANDIN_SPEC_CACHE: "" for the default, "off", or an absolute
// directory) and the executable's Go build ID. Problems only disable the
// cache.
func defaultSpecCache(setting string) specCache {
	if setting == specCacheOff {
		return specCache{}
	}
	id := executableBuildID()
	if id == "" {
		return specCache{}
	}
	dir := setting
	if dir == "" {
		dir = defaultSpecCacheDir()
	}
	if dir == "" || os.MkdirAll(dir, 0o700) != nil {
		return specCache{}
	}
	return specCache{dir: dir, buildID: id}
}

// specCacheOff is the FCSTANDIN_SPEC_CACHE value that disables the cache.
const specCacheOff = "off"

// defaultSpecCacheDir is os.UserCacheDir()/mvm-fcstandin, else a
// per-user folder in the temporary directory.
func defaultSpecCacheDir() string {
	if d, err := os.UserCacheDir(); err == nil && filepath.IsAbs(d) {
		return filepath.Join(d, "mvm-fcstandin")
	}
	d := filepath.Join(os.TempDir(), fmt.Sprintf("mvm-fcstandin-%d", os.Getuid()))
	if err := os.MkdirAll(d, 0o700); err != nil {
		return ""
	}
	// A shared temporary directory: use the folder only if it is ours.
	if st, err := os.Lstat(d); err != nil || !st.IsDir() || st.Mode().Perm()&0o022 != 0 || !ownedByMe(st) {
		return ""
	}
	return d
}

// ownedByMe reports whether the file described by st belongs to this
// process's user.
func ownedByMe(st os.FileInfo) bool {
	sys, ok := st.Sys().(*syscall.Stat_t)
	return ok && int(sys.Uid) == os.Getuid()
}

// executableBuildID returns the Go build ID of the running executable, or
// "" when it cannot be read.
func executableBuildID() string {
	exe, err := os.Executable()
	if err != nil {
		return ""
	}
	id, err := goBuildID(exe)
	if err != nil {
		return ""
	}
	return id
}

// goBuildID reads the Go build ID note (".note.go.buildid") of the ELF
// executable at path.
func goBuildID(path string) (string, error) {
	f, err := elf.Open(path)
	if err != nil {
		return "", err
	}
	defer f.Close()
	sec := f.Section(".note.go.buildid")
	if sec == nil {
		return "", fmt.Errorf("%s: no .note.go.buildid section", path)
	}
	data, err := sec.Data()
	if err != nil {
		return "", fmt.Errorf("%s: %w", path, err)
	}
	// Note: namesz, descsz, type (4 bytes each, file byte order), name
	// "Go\x00\x00", then the build ID.
	const goNoteType = 4
	if len(data) < 16 {
		return "", fmt.Errorf("%s: short build ID note", path)
	}
	bo := f.ByteOrder
	namesz, descsz, typ := bo.Uint32(data), bo.Uint32(data[4:]), bo.Uint32(data[8:])
	if namesz != 4 || typ != goNoteType || string(data[12:16]) != "Go\x00\x00" || uint64(len(data)) < 16+uint64(descsz) {
		return "", fmt.Errorf("%s: malformed build ID note", path)
	}
	id := string(data[16 : 16+descsz])
	if id == "" {
		return "", fmt.Errorf("%s: empty build ID", path)
	}
	return id, nil
}

// validatorDocument reduces the JSON of a prepared OpenAPI 3 document to
// what request routing and body validation read: openapi, info (title and
// version), servers, the paths with each operation's parameters and
// request body, and the component schemas those reach. Descriptions,
// summaries, examples, tags, external docs and responses are dropped.
func validatorDocument(full []byte) ([]byte, error) {
	var doc map[string]any
	if err := json.Unmarshal(full, &doc); err != nil {
		return nil, err
	}
	out := map[string]any{}
	for _, k := range []string{"openapi", "servers", "paths"} {
		if v, ok := doc[k]; ok {
			out[k] = v
		}
	}
	if info, ok := doc["info"].(map[string]any); ok {
		out["info"] = map[string]any{"title": info["title"], "version": info["version"]}
	}
	paths, _ := out["paths"].(map[string]any)
	for _, pi := range paths {
		item, ok := pi.(map[string]any)
		if !ok {
			continue
		}
		delete(item, "summary")
		delete(item, "description")
		stripOperation(item)
		for k, v := range item {
			op, ok := v.(map[string]any)
			if !ok || !isHTTPMethod(k) {
				continue
			}
			for _, drop := range []string{"summary", "description", "tags", "externalDocs", "responses", "callbacks"} {
				delete(op, drop)
			}
			stripOperation(op)
		}
	}
	// Keep the component schemas the paths reach, transitively.
	schemas := map[string]any{}
	if comps, ok := doc["components"].(map[string]any); ok {
		all, _ := comps["schemas"].(map[string]any)
		const prefix = "#/components/schemas/"
		queue := refs(paths, nil)
		for len(queue) > 0 {
			ref := queue[0]
			queue = queue[1:]
			name, ok := strings.CutPrefix(ref, prefix)
			if !ok {
				return nil, fmt.Errorf("unsupported $ref %q", ref)
			}
			if _, done := schemas[name]; done {
				continue
			}
			s, ok := all[name]
			if !ok {
				return nil, fmt.Errorf("$ref %q: no such schema", ref)
			}
			stripSchema(s)
			schemas[name] = s
			queue = refs(s, queue)
		}
	}
	if len(schemas) > 0 {
		out["components"] = map[string]any{"schemas": schemas}
	}
	return json.Marshal(out)
}

func isHTTPMethod(k string) bool {
	switch k {
	case "get", "put", "post", "delete", "options", "head", "patch", "trace":
		return true
	}
	return false
}

// refs appends every "$ref" string found in v to acc.
func refs(v any, acc []string) []string {
	switch x := v.(type) {
	case map[string]any:
		for k, c := range x {
			if s, ok := c.(string); ok && k == "$ref" {
				acc = append(acc, s)
				continue
			}
			acc = refs(c, acc)
		}
	case []any:
		for _, c := range x {
			acc = refs(c, acc)
		}
	}
	return acc
}

// stripOperation removes documentation from an operation's (or a path
// item's) parameters and request body.
func stripOperation(op map[string]any) {
	if params, ok := op["parameters"].([]any); ok {
		for _, p := range params {
			if pm, ok := p.(map[string]any); ok {
				stripDescription(pm)
				delete(pm, "example")
				delete(pm, "examples")
				stripSchema(pm["schema"])
				stripContent(pm["content"])
			}
		}
	}
	if rb, ok := op["requestBody"].(map[string]any); ok {
		stripDescription(rb)
		stripContent(rb["content"])
	}
}

// stripContent strips the media types of a content map.
func stripContent(v any) {
	content, ok := v.(map[string]any)
	if !ok {
		return
	}
	for _, mt := range content {
		if m, ok := mt.(map[string]any); ok {
			delete(m, "example")
			delete(m, "examples")
			stripSchema(m["schema"])
		}
	}
}

func stripDescription(m map[string]any) {
	if _, ok := m["description"].(string); ok {
		delete(m, "description")
	}
}

// stripSchema removes description, title, example(s) and externalDocs from
// a schema and its subschemas. Property names are never touched.
func stripSchema(v any) {
	s, ok := v.(map[string]any)
	if !ok {
		return
	}
	for _, drop := range []string{"description", "title", "example", "examples", "externalDocs"} {
		delete(s, drop)
	}
	for _, k := range []string{"items", "additionalProperties", "not", "contains", "propertyNames", "if", "then", "else", "unevaluatedItems", "unevaluatedProperties"} {
		stripSchema(s[k])
	}
	for _, k := range []string{"allOf", "anyOf", "oneOf", "prefixItems"} {
		if l, ok := s[k].([]any); ok {
			for _, c := range l {
				stripSchema(c)
			}
		}
	}
	for _, k := range []string{"properties", "patternProperties", "dependentSchemas"} {
		if m, ok := s[k].(map[string]any); ok {
			for _, c := range m {
				stripSchema(c)
			}
		}
	}
}

// decodeValidatorDocument decodes the JSON of an OpenAPI 3 document (refs
// not yet resolved). A document of the shape validatorDocument makes is
// decoded piece by piece: kin-openapi decodes each path item and each
// component schema, while the few top-level fields are filled in here.
// That skips kin-openapi's decoding of the document, paths and components
// objects, which re-reads everything below them several times, and gives
// the same document; anything else is decoded by kin-openapi as a whole.
func decodeValidatorDocument(js []byte) (*openapi3.T, error) {
	var top struct {
		OpenAPI    string                     `json:"openapi"`
		Info       json.RawMessage            `json:"info"`
		Servers    json.RawMessage            `json:"servers"`
		Paths      map[string]json.RawMessage `json:"paths"`
		Components *struct {
			Schemas map[string]json.RawMessage `json:"schemas"`
		} `json:"components"`
	}
	dec := json.NewDecoder(bytes.NewReader(js))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&top); err != nil || dec.More() || top.Info == nil || top.Paths == nil {
		var doc openapi3.T
		if err := json.Unmarshal(js, &doc); err != nil {
			return nil, err
		}
		return &doc, nil
	}
	doc := &openapi3.T{OpenAPI: top.OpenAPI, Paths: openapi3.NewPaths()}
	if err := json.Unmarshal(top.Info, &doc.Info); err != nil {
		return nil, fmt.Errorf("info: %w", err)
	}
	if top.Servers != nil {
		if err := json.Unmarshal(top.Servers, &doc.Servers); err != nil {
			return nil, fmt.Errorf("servers: %w", err)
		}
	}
	for path, raw := range top.Paths {
		if strings.HasPrefix(path, "x-") {
			var ext any
			if err := json.Unmarshal(raw, &ext); err != nil {
				return nil, fmt.Errorf("paths: %s: %w", path, err)
			}
			if doc.Paths.Extensions == nil {
				doc.Paths.Extensions = map[string]any{}
			}
			doc.Paths.Extensions[path] = ext
			continue
		}
		item := &openapi3.PathItem{}
		if err := json.Unmarshal(raw, item); err != nil {
			return nil, fmt.Errorf("paths: %s: %w", path, err)
		}
		doc.Paths.Set(path, item)
	}
	if top.Components != nil {
		doc.Components = &openapi3.Components{}
		if top.Components.Schemas != nil {
			doc.Components.Schemas = make(openapi3.Schemas, len(top.Components.Schemas))
		}
		for name, raw := range top.Components.Schemas {
			ref := &openapi3.SchemaRef{}
			if err := json.Unmarshal(raw, ref); err != nil {
				return nil, fmt.Errorf("components: schemas: %s: %w", name, err)
			}
			doc.Components.Schemas[name] = ref
		}
	}
	return doc, nil
}
