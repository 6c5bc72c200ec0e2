package main

import (
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	microvm "github.com/mvm-dev/microvm"
)

// guestAgent returns rt's guest agent, or an error saying the runtime has
// none.
func guestAgent(rt microvm.Runtime) (microvm.GuestAgent, error) {
	ga, ok := rt.(microvm.GuestAgent)
	if !ok {
		return nil, fmt.Errorf("%w: this runtime has no guest agent", microvm.ErrUnsupported)
	}
	return ga, nil
}

// exitStatus is a guest command's exit status, handed to the shell.
type exitStatus struct{ code int }

func (e *exitStatus) Error() string { return fmt.Sprintf("command exited with status %d", e.code) }
func (e *exitStatus) ExitCode() int { return e.code }

func execCmd(g *globals) *cobra.Command {
	var tty bool
	var envs []string
	var dir, user string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "exec VM [-t] [-e KEY=VALUE]... [-w DIR] [-u USER] [--timeout D] -- CMD [ARG...]",
		Short: "Run a command in a VM's guest (needs mvm-agent and a vsock device); exits with its status",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 && args[1] == "--" {
				args = append(args[:1:1], args[2:]...)
			}
			if len(args) < 2 || cmd.ArgsLenAtDash() != 1 {
				return usagef("exec: want VM -- CMD [ARG...] (flags before the --)")
			}
			return nonEmptyArgs(cmd, args[:2], "VM CMD")
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) > 1 && args[1] == "--" {
				args = append(args[:1:1], args[2:]...)
			}
			req := microvm.ExecRequest{Args: args[1:], Dir: dir, User: user, TTY: tty, Timeout: timeout,
				Stdin: os.Stdin, Stdout: cmd.OutOrStdout(), Stderr: cmd.ErrOrStderr()}
			for _, e := range envs {
				k, v, ok := strings.Cut(e, "=")
				if !ok {
					return usagef("-e must be KEY=VALUE (got %q)", e)
				}
				if err := microvm.ValidEnvKey(k); err != nil {
					return usagef("-e: %v", err)
				}
				if req.Env == nil {
					req.Env = map[string]string{}
				}
				req.Env[k] = v
			}
			if timeout < 0 {
				return usagef("--timeout must not be negative")
			}
			sigs := make(chan os.Signal, 4)
			signal.Notify(sigs, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2)
			defer signal.Stop(sigs)
			req.Signals = sigs
			if tty {
				fd := int(os.Stdin.Fd())
				if ws, err := unix.IoctlGetWinsize(fd, unix.TIOCGWINSZ); err == nil {
					req.TTYSize = &microvm.TermSize{Rows: ws.Row, Cols: ws.Col}
				}
				if old, err := unix.IoctlGetTermios(fd, unix.TCGETS); err == nil {
					raw := *old
					raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
					raw.Oflag &^= unix.OPOST
					raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
					raw.Cc[unix.VMIN], raw.Cc[unix.VTIME] = 1, 0
					if unix.IoctlSetTermios(fd, unix.TCSETS, &raw) == nil {
						defer unix.IoctlSetTermios(fd, unix.TCSETS, old)
					}
				}
			}
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				ga, err := guestAgent(rt)
				if err != nil {
					return err
				}
				res, err := ga.Exec(cmd.Context(), args[0], req)
				if err != nil {
					return err
				}
				switch {
				case res.TimedOut:
					fmt.Fprintf(cmd.ErrOrStderr(), "mvm: exec: %s timed out after %v and was killed\n", args[1], timeout)
					return &exitStatus{124}
				case res.Signal != "":
					n := unix.SignalNum(res.Signal)
					return &exitStatus{128 + int(n)}
				case res.ExitCode != 0:
					return &exitStatus{res.ExitCode}
				}
				return nil
			})
		},
	}
	f := cmd.Flags()
	f.BoolVarP(&tty, "tty", "t", false, "run the command on a terminal (raw mode here when stdin is one)")
	f.StringArrayVarP(&envs, "env", "e", nil, "set an environment variable KEY=VALUE (repeatable)")
	f.StringVarP(&dir, "workdir", "w", "", "working directory in the guest (absolute)")
	f.StringVarP(&user, "user", "u", "", "run as this guest user (name, uid or uid:gid)")
	f.DurationVar(&timeout, "timeout", 0, "kill the command after this long (e.g. 30s; 0: never); exit status 124")
	return cmd
}

func cpCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "cp SRC VM:DST | cp VM:SRC DST",
		Short: "Copy a file into or out of a VM's guest (atomic in the guest; - is stdin or stdout)",
		Args:  exactArgs(2, "SRC DST"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := nonEmptyArgs(cmd, args, "SRC DST"); err != nil {
				return err
			}
			srcVM, srcPath, srcIn := splitGuest(args[0])
			dstVM, dstPath, dstIn := splitGuest(args[1])
			if srcIn == dstIn {
				for _, a := range args {
					if vm, p, ok := strings.Cut(a, ":"); !srcIn && ok && microvm.ValidateID(vm) == nil && !strings.HasPrefix(p, "/") {
						return usagef("cp: the guest path of %q must be absolute: VM:/PATH", a)
					}
				}
				return usagef("cp: exactly one of SRC and DST must be VM:/PATH (got %q and %q)", args[0], args[1])
			}
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				ga, err := guestAgent(rt)
				if err != nil {
					return err
				}
				ctx := cmd.Context()
				if dstIn {
					var r io.Reader = os.Stdin
					opts := &microvm.WriteFileOptions{Size: -1}
					if srcPath != "-" {
						f, err := os.Open(srcPath)
						if err != nil {
							return err
						}
						defer f.Close()
						st, err := f.Stat()
						if err != nil {
							return err
						}
						if !st.Mode().IsRegular() {
							return fmt.Errorf("cp: %s is not a regular file", srcPath)
						}
						r, opts.Size, opts.Mode = f, st.Size(), st.Mode().Perm()
					}
					return ga.WriteFile(ctx, dstVM, dstPath, r, opts)
				}
				if dstPath == "-" {
					_, err := ga.ReadFile(ctx, srcVM, srcPath, cmd.OutOrStdout())
					return err
				}
				// Into a temporary file beside DST, renamed when whole.
				tmp, err := os.CreateTemp(dirOf(dstPath), ".mvm-cp-*")
				if err != nil {
					return err
				}
				defer os.Remove(tmp.Name())
				fi, err := ga.ReadFile(ctx, srcVM, srcPath, tmp)
				if err == nil {
					err = tmp.Chmod(fi.Mode.Perm())
				}
				if cerr := tmp.Close(); err == nil {
					err = cerr
				}
				if err != nil {
					return err
				}
				return os.Rename(tmp.Name(), dstPath)
			})
		},
	}
}

func dirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		if i == 0 {
			return "/"
		}
		return p[:i]
	}
	return "."
}

// splitGuest splits "VM:PATH" (a path in the guest: absolute).
func splitGuest(s string) (vm, path string, inGuest bool) {
	if i := strings.IndexByte(s, ':'); i > 0 && i+1 < len(s) && s[i+1] == '/' && !strings.Contains(s[:i], "/") {
		return s[:i], s[i+1:], true
	}
	return "", s, false
}

func envCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "env VM KEY=VALUE...",
		Short: "Set environment variables for later execs in a VM's guest",
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) < 2 {
				return usagef("env: want VM KEY=VALUE...")
			}
			return nonEmptyArgs(cmd, args[:1], "VM")
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			env := map[string]string{}
			for _, a := range args[1:] {
				k, v, ok := strings.Cut(a, "=")
				if !ok {
					return usagef("env: %q must be KEY=VALUE", a)
				}
				if err := microvm.ValidEnvKey(k); err != nil {
					return usagef("env: %v", err)
				}
				env[k] = v
			}
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				ga, err := guestAgent(rt)
				if err != nil {
					return err
				}
				return ga.SetEnv(cmd.Context(), args[0], env)
			})
		},
	}
}

func secretCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "secret VM NAME",
		Short: "Store a secret in a VM's guest; the value is read from stdin (never from the command line)",
		Args:  exactArgs(2, "VM NAME"),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := nonEmptyArgs(cmd, args, "VM NAME"); err != nil {
				return err
			}
			if err := microvm.ValidSecretName(args[1]); err != nil {
				return usagef("secret: %v", err)
			}
			value, err := io.ReadAll(io.LimitReader(cmd.InOrStdin(), microvm.MaxSecretBytes+1))
			if err != nil {
				return fmt.Errorf("secret: read the value from stdin: %w", err)
			}
			defer clear(value)
			if len(value) > microvm.MaxSecretBytes {
				return usagef("secret: the value on stdin is longer than %d bytes", microvm.MaxSecretBytes)
			}
			return g.withRuntime(cmd.Context(), func(rt microvm.Runtime) error {
				ga, err := guestAgent(rt)
				if err != nil {
					return err
				}
				return ga.SetSecret(cmd.Context(), args[0], args[1], value)
			})
		},
	}
}
