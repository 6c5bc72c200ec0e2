package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"sync"

	microvm "github.com/mvm-dev/microvm"
)

// Exec runs a command in the guest; see [microvm.GuestAgent]. When ctx
// ends the connection is closed and the agent kills the command's process
// group. Exec does not wait for a copy of req.Stdin blocked in Read: that
// goroutine ends at the reader's next Read.
func (g *Guest) Exec(ctx context.Context, req microvm.ExecRequest) (microvm.ExecResult, error) {
	if err := req.Validate(); err != nil {
		return microvm.ExecResult{}, err
	}
	spec := ExecSpec{Args: req.Args, Env: req.Env, Dir: req.Dir, User: req.User, TTY: req.TTY, Stdin: req.Stdin != nil}
	if req.Timeout > 0 {
		spec.TimeoutMS = max(1, req.Timeout.Milliseconds())
	}
	if req.TTYSize != nil {
		spec.Rows, spec.Cols = req.TTYSize.Rows, req.TTYSize.Cols
	}
	head, err := json.Marshal(spec)
	if err != nil {
		return microvm.ExecResult{}, fmt.Errorf("agent: exec: %w", err)
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pr, pw := io.Pipe()
	defer pw.Close()
	go func() {
		if _, err := pw.Write(append(head, '\n')); err != nil {
			return
		}
		if req.Stdin != nil {
			_, err := io.CopyBuffer(pw, req.Stdin, make([]byte, 64<<10))
			if err != nil && !errors.Is(err, io.ErrClosedPipe) {
				// The caller's stdin failed: end the body in error, the
				// agent sees a dropped client and kills the command.
				pw.CloseWithError(fmt.Errorf("stdin: %w", err))
				return
			}
		}
		pw.Close()
	}()
	hr, err := g.newRequest(ctx, http.MethodPost, "/v1/exec", nil, pr)
	if err != nil {
		return microvm.ExecResult{}, err
	}
	hr.Header.Set("Content-Type", ExecContentType)
	resp, err := g.do(ctx, hr)
	if err != nil {
		return microvm.ExecResult{}, fmt.Errorf("agent: exec: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return microvm.ExecResult{}, opErr("exec", decodeError(resp))
	}
	id := resp.Header.Get(ExecIDHeader)
	pid, _ := strconv.Atoi(resp.Header.Get(ExecPIDHeader))

	done := make(chan struct{})
	var side sync.WaitGroup
	defer side.Wait()
	defer close(done)
	if req.Signals != nil {
		side.Add(1)
		go forward(&side, done, req.Signals, func(sig os.Signal) {
			if n, err := microvm.SignalNumber(sig); err == nil {
				g.call(ctx, "signal", http.MethodPost, "/v1/exec/"+id+"/signal", url.Values{"signal": {strconv.Itoa(n)}}, nil, -1, nil)
			}
		})
	}
	if req.Resize != nil {
		side.Add(1)
		go forward(&side, done, req.Resize, func(sz microvm.TermSize) {
			g.call(ctx, "resize", http.MethodPost, "/v1/exec/"+id+"/resize", url.Values{"rows": {strconv.Itoa(int(sz.Rows))}, "cols": {strconv.Itoa(int(sz.Cols))}}, nil, -1, nil)
		})
	}

	stdout, stderr := req.Stdout, req.Stderr
	if stdout == nil {
		stdout = io.Discard
	}
	if stderr == nil {
		stderr = io.Discard
	}
	buf := make([]byte, 0, 256<<10)
	for {
		typ, p, err := readFrame(resp.Body, buf)
		if err != nil {
			if ctx.Err() != nil {
				return microvm.ExecResult{PID: pid}, fmt.Errorf("agent: exec %q: %w (the command was killed)", truncate(req.Args[0], 64), context.Cause(ctx))
			}
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return microvm.ExecResult{PID: pid}, fmt.Errorf("agent: exec %q: %w: %w", truncate(req.Args[0], 64), microvm.ErrConnectionLost, err)
		}
		buf = p[:0]
		switch typ {
		case FrameStdout, FrameStderr:
			if len(p) == 0 {
				continue
			}
			w, name := stdout, "stdout"
			if typ == FrameStderr {
				w, name = stderr, "stderr"
			}
			if _, err := w.Write(p); err != nil {
				cancel(err)
				return microvm.ExecResult{PID: pid}, fmt.Errorf("agent: exec %q: writing its %s: %w (the command was killed)", truncate(req.Args[0], 64), name, err)
			}
		case FrameExit:
			var x ExecExit
			if err := json.Unmarshal(p, &x); err != nil {
				return microvm.ExecResult{PID: pid}, fmt.Errorf("agent: exec: bad exit frame: %w", err)
			}
			pw.Close()
			if x.Error != "" {
				return microvm.ExecResult{PID: pid}, fmt.Errorf("agent: exec %q: %s", truncate(req.Args[0], 64), x.Error)
			}
			// Let the transport see the end of the response so the
			// connection is reused.
			io.Copy(io.Discard, io.LimitReader(resp.Body, 1))
			return microvm.ExecResult{ExitCode: x.ExitCode, Signal: x.Signal, TimedOut: x.TimedOut, PID: pid}, nil
		default:
			return microvm.ExecResult{PID: pid}, fmt.Errorf("agent: exec: unknown frame type %q", typ)
		}
	}
}

// forward calls f with each value received on ch until ch is closed or
// done is, then marks wg done.
func forward[T any](wg *sync.WaitGroup, done <-chan struct{}, ch <-chan T, f func(T)) {
	defer wg.Done()
	for {
		select {
		case <-done:
			return
		case v, ok := <-ch:
			if !ok {
				return
			}
			f(v)
		}
	}
}
