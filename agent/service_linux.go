package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
)

// Service is the guest side of the HTTP API: exec, files, environment,
// secrets and ping. Fill in its fields, then call [Service.Serve] (or use
// [Service.Handler] with an http.Server of your own). Its fields must not
// change once it serves.
type Service struct {
	// Version is the agent's version, reported by ping.
	Version string
	// SecretsDir is where secrets are kept; it must be on tmpfs (or
	// ramfs). Default DefaultSecretsDir.
	SecretsDir string
	// FileRoots are the directories files may be read and written under
	// (after symbolic links are resolved); default "/".
	FileRoots []string
	// FileDeny are directories under FileRoots that are refused all the
	// same; default /proc, /sys and /dev. SecretsDir is always refused.
	FileDeny []string
	// Env is the base environment of every exec ("KEY=VALUE"); default
	// PATH=DefaultPath and HOME=/root. SetEnv adds to it.
	Env []string
	// Reaper, when set, is the process's reaper of every child (the agent
	// as PID 1): execs wait through it. Nil: execs are waited for
	// directly.
	Reaper *Reaper
	// Log receives one record per exec, file and secret operation (never
	// a secret's value, a file's content or a command's arguments beyond
	// its name). Nil discards.
	Log *slog.Logger

	initOnce sync.Once
	started  time.Time
	envMu    sync.Mutex
	env      map[string]string // SetEnv's variables
	execMu   sync.Mutex
	execs    map[string]*execProc
	nextExec atomic.Uint64
}

func (s *Service) init() {
	s.initOnce.Do(func() {
		s.started = time.Now()
		if s.SecretsDir == "" {
			s.SecretsDir = DefaultSecretsDir
		}
		if len(s.FileRoots) == 0 {
			s.FileRoots = []string{"/"}
		}
		if s.FileDeny == nil {
			s.FileDeny = []string{"/proc", "/sys", "/dev"}
		}
		if s.Env == nil {
			s.Env = []string{"PATH=" + DefaultPath, "HOME=/root"}
		}
		if s.Log == nil {
			s.Log = slog.New(slog.DiscardHandler)
		}
		s.env = map[string]string{}
		s.execs = map[string]*execProc{}
	})
}

// Handler returns the API's handler.
func (s *Service) Handler() http.Handler {
	s.init()
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/ping", s.handlePing)
	mux.HandleFunc("POST /v1/exec", s.handleExec)
	mux.HandleFunc("POST /v1/exec/{id}/signal", s.handleSignal)
	mux.HandleFunc("POST /v1/exec/{id}/resize", s.handleResize)
	mux.HandleFunc("PUT /v1/files", s.handleWriteFile)
	mux.HandleFunc("GET /v1/files", s.handleReadFile)
	mux.HandleFunc("PUT /v1/env", s.handleEnv)
	mux.HandleFunc("PUT /v1/secrets/{name}", s.handleSecret)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, errorf(CodeUnknownOp, "unknown endpoint %s %s (this agent serves API v%d)", r.Method, truncate(r.URL.Path, 64), APIVersion))
	})
	return mux
}

// Serve serves the API on ln until ctx ends or ln fails; it then closes
// every connection, kills the commands still running, and returns (nil
// after ctx ended).
func (s *Service) Serve(ctx context.Context, ln net.Listener) error {
	srv := &http.Server{
		Handler:           s.Handler(),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       5 * time.Minute,
		ErrorLog:          nil,
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	stop := context.AfterFunc(ctx, func() { srv.Close() })
	defer stop()
	err := srv.Serve(ln)
	srv.Close()
	s.killAll()
	if ctx.Err() != nil || errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

func (s *Service) handlePing(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, HTTPPing{PingResult: PingResult{Version: s.Version, Protocol: ProtocolVersion, UptimeNS: int64(time.Since(s.started)), PID: os.Getpid()}, API: APIVersion})
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}

// handleEnv merges a JSON object of variables into the exec environment; a
// null value removes a variable. Every key is checked before any is set.
func (s *Service) handleEnv(w http.ResponseWriter, r *http.Request) {
	var m map[string]*string
	if err := json.NewDecoder(io.LimitReader(r.Body, 4<<20)).Decode(&m); err != nil {
		writeError(w, errorf(CodeBadRequest, "env body must be a JSON object of strings: %v", err))
		return
	}
	for k, v := range m {
		if err := microvm.ValidEnvKey(k); err != nil {
			writeError(w, errorf(CodeBadRequest, "%v", err))
			return
		}
		if v != nil {
			if err := microvm.ValidEnvValue(k, *v); err != nil {
				writeError(w, errorf(CodeBadRequest, "%v", err))
				return
			}
		}
	}
	s.envMu.Lock()
	for k, v := range m {
		if v == nil {
			delete(s.env, k)
		} else {
			s.env[k] = *v
		}
	}
	s.envMu.Unlock()
	s.Log.Info("env set", "keys", len(m))
	w.WriteHeader(http.StatusNoContent)
}

// handleSecret stores the body as secret {name}: a file 0400 in
// SecretsDir (0700, on tmpfs), written atomically.
func (s *Service) handleSecret(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := microvm.ValidSecretName(name); err != nil {
		writeError(w, errorf(CodeBadRequest, "%v", err))
		return
	}
	value, err := io.ReadAll(io.LimitReader(r.Body, microvm.MaxSecretBytes+1))
	if err != nil {
		writeError(w, errorf(CodeBadRequest, "secret %s: reading the value: %v", name, err))
		return
	}
	if len(value) > microvm.MaxSecretBytes {
		writeError(w, errorf(CodeBadRequest, "secret %s: value longer than %d bytes", name, microvm.MaxSecretBytes))
		return
	}
	defer clear(value)
	if err := s.storeSecret(name, value); err != nil {
		writeError(w, errorf(CodeFailed, "secret %s: %v", name, err))
		return
	}
	s.Log.Info("secret set", "name", name)
	w.WriteHeader(http.StatusNoContent)
}

func (s *Service) storeSecret(name string, value []byte) error {
	dir := s.SecretsDir
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o700); err != nil {
		return err
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return fmt.Errorf("statfs %s: %w", dir, err)
	}
	if st.Type != unix.TMPFS_MAGIC && st.Type != unix.RAMFS_MAGIC {
		return fmt.Errorf("secrets directory %s is not on tmpfs (file system type %#x): refusing to put a secret on disk", dir, st.Type)
	}
	f, err := os.CreateTemp(dir, "."+name+".tmp-")
	if err != nil {
		return err
	}
	tmp := f.Name()
	ok := false
	defer func() {
		if !ok {
			f.Close()
			os.Remove(tmp)
		}
	}()
	if err := f.Chmod(0o400); err != nil {
		return err
	}
	if _, err := f.Write(value); err != nil {
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(tmp, filepath.Join(dir, name)); err != nil {
		return err
	}
	ok = true
	return nil
}

// execEnv is the environment of an exec: the base, SetEnv's, the
// request's, MVM_SECRETS_DIR.
func (s *Service) execEnv(extra map[string]string, home string) []string {
	m := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := m[k]; !ok {
			order = append(order, k)
		}
		m[k] = v
	}
	for _, kv := range s.Env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			set(k, v)
		}
	}
	if home != "" {
		set("HOME", home)
	}
	s.envMu.Lock()
	for k, v := range s.env {
		set(k, v)
	}
	s.envMu.Unlock()
	for k, v := range extra {
		set(k, v)
	}
	if _, ok := m["PATH"]; !ok {
		set("PATH", DefaultPath)
	}
	set("MVM_SECRETS_DIR", s.SecretsDir)
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+m[k])
	}
	return out
}

// parseOctal parses a permission mode.
func parseOctal(field, v string) (uint32, *Error) {
	n, err := strconv.ParseUint(v, 8, 32)
	if err != nil || n > 0o7777 {
		return 0, errorf(CodeBadRequest, "%s must be an octal mode up to 7777 (got %q)", field, truncate(v, 16))
	}
	return uint32(n), nil
}

// parseID parses a uid or gid.
func parseID(field, v string) (int, *Error) {
	n, err := strconv.ParseUint(v, 10, 31)
	if err != nil {
		return 0, errorf(CodeBadRequest, "%s must be a number from 0 to %d (got %q)", field, 1<<31-1, truncate(v, 16))
	}
	return int(n), nil
}
