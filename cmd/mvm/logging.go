package main

import (
	"io"
	"log/slog"
	"os"
	"strings"

	"github.com/spf13/cobra"
)

// logFlags are --log-level and --log-format: mvm's own diagnostics (the
// runtime's and the network manager's background events: recovery, pool
// refills, cleanup), written to stderr. Off unless --log-level is given.
type logFlags struct {
	level, format string
}

func (l *logFlags) flags(root *cobra.Command) {
	pf := root.PersistentFlags()
	pf.StringVar(&l.level, "log-level", os.Getenv("MVM_LOG_LEVEL"),
		"log mvm's own diagnostics to stderr at this level: debug, info, warn or error (env MVM_LOG_LEVEL; default: none)")
	pf.StringVar(&l.format, "log-format", envOr("MVM_LOG_FORMAT", "text"), "format of --log-level output: text or json (env MVM_LOG_FORMAT)")
}

// check validates the flags as usage errors.
func (l *logFlags) check() error {
	if _, err := l.slogLevel(); err != nil {
		return err
	}
	switch l.format {
	case "text", "json":
		return nil
	}
	return usagef("--log-format must be text or json (got %q)", l.format)
}

func (l *logFlags) slogLevel() (slog.Level, error) {
	switch strings.ToLower(l.level) {
	case "", "warn", "warning":
		return slog.LevelWarn, nil
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "error":
		return slog.LevelError, nil
	}
	return 0, usagef("--log-level must be debug, info, warn or error (got %q)", l.level)
}

// logger is the logger the runtime and the network manager get: nil (they
// log nothing) without --log-level.
func (l *logFlags) logger(w io.Writer) *slog.Logger {
	if l.level == "" {
		return nil
	}
	lvl, _ := l.slogLevel()
	opts := &slog.HandlerOptions{Level: lvl}
	if l.format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}
