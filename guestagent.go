package microvm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"syscall"
	"time"
)

// GuestAgent is the optional capability of a [Runtime] whose guests run the
// project's agent (cmd/mvm-agent): run commands in the guest, move files in
// and out, set environment variables and secrets. Test for it with a type
// assertion:
//
//	ga, ok := rt.(microvm.GuestAgent)
//
// The firecracker runtime reaches the agent over the VM's vsock device
// (Spec.Vsock is required); the memory runtime offers a fake guest for
// tests of programs that embed mvm.
//
// Every method is bounded by its context. The VM must be running: an unknown
// id gives [ErrNotFound], a VM in another status [ErrInvalidTransition], a
// guest whose agent does not answer [ErrAgentUnavailable] (the error names
// the vsock port). Bad arguments give [ErrInvalidArgument] before anything
// reaches the guest.
type GuestAgent interface {
	// Ping checks that the guest's agent answers and returns its version.
	Ping(ctx context.Context, id string) (AgentInfo, error)
	// Exec runs a command in the guest and waits for it to end. Its
	// output is streamed to req.Stdout and req.Stderr as it comes; a
	// command that ran and exited non-zero, or was killed by a signal, is
	// a result, not an error. A command that cannot be started gives
	// [ErrCommandNotFound] (or another error naming why).
	Exec(ctx context.Context, id string, req ExecRequest) (ExecResult, error)
	// WriteFile writes what r yields to path in the guest, atomically:
	// the file appears whole, with its mode and owner, or not at all
	// (a dropped connection or a full disk leaves nothing half-written).
	// A path outside what the agent may write gives [ErrPathNotAllowed].
	WriteFile(ctx context.Context, id, path string, r io.Reader, opts *WriteFileOptions) error
	// ReadFile streams the guest file at path to w and returns its size
	// and mode.
	ReadFile(ctx context.Context, id, path string, w io.Writer) (FileInfo, error)
	// SetEnv sets environment variables for later Execs in the guest; an
	// empty value is kept as empty. Keys must match [A-Za-z_][A-Za-z0-9_]*.
	SetEnv(ctx context.Context, id string, env map[string]string) error
	// SetSecret stores a secret in the guest, as a file readable only by
	// root in a tmpfs directory (the agent's secrets directory, given to
	// every Exec as MVM_SECRETS_DIR). The value is never logged nor kept
	// in the host's records. Names must match [A-Za-z0-9_-]+.
	SetSecret(ctx context.Context, id, name string, value []byte) error
}

// Errors of a [GuestAgent].
var (
	// ErrAgentUnavailable: no agent answered in the guest (the guest has
	// no agent, it is still booting, or its vsock device is missing).
	ErrAgentUnavailable = errors.New("guest agent unavailable")
	// ErrCommandNotFound: the command of an Exec does not exist in the
	// guest or cannot be executed there.
	ErrCommandNotFound = errors.New("command not found in guest")
	// ErrPathNotAllowed: the guest path is outside what the agent may read
	// or write.
	ErrPathNotAllowed = errors.New("guest path not allowed")
	// ErrGuestFileNotFound: the guest file to read does not exist.
	ErrGuestFileNotFound = errors.New("guest file not found")
	// ErrNoSpace: the guest file system has no room for the file.
	ErrNoSpace = errors.New("no space left in guest")
	// ErrConnectionLost: the connection to the agent broke in the middle of
	// a call. What the call was doing in the guest is undone where it can
	// be (a file being written is not created; a command is killed).
	ErrConnectionLost = errors.New("connection to guest agent lost")
)

// AgentInfo describes a guest's agent.
type AgentInfo struct {
	// Version is the agent's version.
	Version string `json:"version"`
	// Protocol is the agent's protocol version.
	Protocol int `json:"protocol"`
	// Uptime is how long the agent has run.
	Uptime time.Duration `json:"uptime"`
}

// ExecRequest is a command to run in a guest.
type ExecRequest struct {
	// Args is the command and its arguments; Args[0] is looked up in the
	// PATH of the command's environment when it has no '/'. Required.
	Args []string
	// Env adds to (and overrides) the guest's environment: the agent's
	// defaults, then what SetEnv set, then Env. Keys must match
	// [A-Za-z_][A-Za-z0-9_]*.
	Env map[string]string
	// Dir is the working directory (absolute); empty means "/".
	Dir string
	// User runs the command as this user: a name, a uid, or uid:gid.
	// Empty means the agent's user (root).
	User string
	// TTY runs the command on a pseudo-terminal: Stdout receives what the
	// terminal shows (stdout and stderr merged), Stderr nothing.
	TTY bool
	// TTYSize is the terminal's initial size (TTY only); nil means 24x80.
	TTYSize *TermSize
	// Stdin is copied to the command's standard input; nil means none
	// (the command reads end-of-file).
	Stdin io.Reader
	// Stdout and Stderr receive the command's output; nil discards it.
	Stdout, Stderr io.Writer
	// Timeout, when positive, kills the command (and every process in its
	// process group) that long after it started; the result then has
	// TimedOut.
	Timeout time.Duration
	// Signals, when not nil, forwards each signal received to the
	// command's process group until the command ends.
	Signals <-chan os.Signal
	// Resize, when not nil, changes the terminal's size (TTY only).
	Resize <-chan TermSize
}

// TermSize is a terminal's size in characters.
type TermSize struct {
	Rows uint16 `json:"rows"`
	Cols uint16 `json:"cols"`
}

// ExecResult is how a command ended.
type ExecResult struct {
	// ExitCode is the command's exit status, or -1 when a signal ended it.
	ExitCode int `json:"exit_code"`
	// Signal names the signal that ended the command ("SIGKILL"), if any.
	Signal string `json:"signal,omitempty"`
	// TimedOut reports that the request's Timeout killed the command.
	TimedOut bool `json:"timed_out,omitempty"`
	// PID is the command's process id in the guest.
	PID int `json:"pid,omitempty"`
}

// WriteFileOptions are options of WriteFile; nil means the defaults.
type WriteFileOptions struct {
	// Mode is the file's permission bits; 0 means 0644.
	Mode os.FileMode
	// UID and GID own the file; nil means root (0).
	UID, GID *int
	// Size, when not negative, is how many bytes r yields; it lets the
	// guest refuse a file too large for its disk before the transfer.
	// -1 (or 0 with a non-empty r) means unknown.
	Size int64
}

// FileInfo describes a guest file that was read.
type FileInfo struct {
	// Size is the file's size in bytes.
	Size int64 `json:"size"`
	// Mode is the file's permission bits.
	Mode os.FileMode `json:"mode"`
}

// ValidEnvKey checks an environment variable name against
// [A-Za-z_][A-Za-z0-9_]*; the error matches [ErrInvalidArgument].
func ValidEnvKey(key string) error {
	ok := key != ""
	for i := 0; ok && i < len(key); i++ {
		c := key[i]
		ok = c == '_' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || i > 0 && c >= '0' && c <= '9'
	}
	if !ok {
		return fmt.Errorf("%w: environment variable name %q must match [A-Za-z_][A-Za-z0-9_]*", ErrInvalidArgument, truncate(key, 64))
	}
	return nil
}

// ValidEnvValue checks an environment value: no NUL byte.
func ValidEnvValue(key, value string) error {
	for i := 0; i < len(value); i++ {
		if value[i] == 0 {
			return fmt.Errorf("%w: environment variable %s: value must not contain a NUL byte", ErrInvalidArgument, key)
		}
	}
	return nil
}

// ValidEnv checks each variable of env with [ValidEnvKey] and
// [ValidEnvValue]; the error matches [ErrInvalidArgument].
func ValidEnv(env map[string]string) error {
	for k, v := range env {
		if err := ValidEnvKey(k); err != nil {
			return err
		}
		if err := ValidEnvValue(k, v); err != nil {
			return err
		}
	}
	return nil
}

// MaxSecretName bounds the length of a secret's name.
const MaxSecretName = 128

// MaxSecretBytes bounds a secret's value.
const MaxSecretBytes = 1 << 20

// ValidSecretName checks a secret's name against [A-Za-z0-9_-]+ (at most
// [MaxSecretName] bytes); the error matches [ErrInvalidArgument].
func ValidSecretName(name string) error {
	ok := name != "" && len(name) <= MaxSecretName
	for i := 0; ok && i < len(name); i++ {
		c := name[i]
		ok = c == '_' || c == '-' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9'
	}
	if !ok {
		return fmt.Errorf("%w: secret name %q must match [A-Za-z0-9_-]+ (at most %d bytes)", ErrInvalidArgument, truncate(name, 64), MaxSecretName)
	}
	return nil
}

// Validate checks an ExecRequest before it is sent: Args non-empty without
// NUL bytes, valid Env keys, an absolute Dir, a non-negative Timeout, and
// TTYSize or Resize only with TTY. The error matches [ErrInvalidArgument].
func (r *ExecRequest) Validate() error {
	if len(r.Args) == 0 || r.Args[0] == "" {
		return fmt.Errorf("%w: exec args: a command is required", ErrInvalidArgument)
	}
	for i, a := range r.Args {
		for j := 0; j < len(a); j++ {
			if a[j] == 0 {
				return fmt.Errorf("%w: exec args[%d]: must not contain a NUL byte", ErrInvalidArgument, i)
			}
		}
	}
	for k, v := range r.Env {
		if err := ValidEnvKey(k); err != nil {
			return err
		}
		if err := ValidEnvValue(k, v); err != nil {
			return err
		}
	}
	if r.Dir != "" && r.Dir[0] != '/' {
		return fmt.Errorf("%w: exec dir %q must be an absolute path", ErrInvalidArgument, truncate(r.Dir, 64))
	}
	if r.Timeout < 0 {
		return fmt.Errorf("%w: exec timeout must not be negative (got %v)", ErrInvalidArgument, r.Timeout)
	}
	if !r.TTY && (r.TTYSize != nil || r.Resize != nil) {
		return fmt.Errorf("%w: exec tty size and resize need TTY", ErrInvalidArgument)
	}
	return nil
}

// SignalNumber returns the number of a signal to forward, or an error for a
// signal that is not a syscall.Signal.
func SignalNumber(s os.Signal) (int, error) {
	if n, ok := s.(syscall.Signal); ok && n > 0 && n < 65 {
		return int(n), nil
	}
	return 0, fmt.Errorf("%w: cannot forward signal %v", ErrInvalidArgument, s)
}
