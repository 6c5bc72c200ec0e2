package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestLogFlags: bad --log-level and --log-format values are usage errors
// naming the flag; with --log-level the runtime's diagnostics reach stderr
// in the chosen format (a rename logs "vm renamed" at info), and without
// it nothing but the command's own output is written.
func TestLogFlags(t *testing.T) {
	for _, args := range [][]string{
		{"--log-level", "loud", "ls"},
		{"--log-format", "xml", "--log-level", "info", "ls"},
	} {
		if code, _, errs := mvm(t, append([]string{"--runtime", "memory"}, args...)...); code != 2 || !strings.Contains(errs, args[0]) {
			t.Errorf("mvm %v: exit %d, stderr %q; want 2 naming %s", args, code, errs, args[0])
		}
	}
	c := newCLI(t)
	kernel, rootfs := images(t)
	c.ok("create", "log-a", "--kernel", kernel, "--rootfs", rootfs, "--memory", "32")
	code, _, errs := c.run("--log-level", "info", "--log-format", "json", "rename", "log-a", "log-b")
	if code != 0 {
		t.Fatalf("rename with --log-level info: exit %d, %q", code, errs)
	}
	var line struct {
		Level string `json:"level"`
		Msg   string `json:"msg"`
		From  string `json:"from"`
	}
	if err := json.Unmarshal([]byte(strings.TrimSpace(errs)), &line); err != nil || line.Msg != "vm renamed" || line.Level != "INFO" || line.From != "log-a" {
		t.Errorf("stderr %q: want one JSON log line for the rename (%v)", errs, err)
	}
	if code, _, errs := c.run("rename", "log-b", "log-a"); code != 0 || errs != "" {
		t.Errorf("rename without --log-level: exit %d, stderr %q; want nothing on stderr", code, errs)
	}
	code, _, errs = c.run("--log-level", "debug", "rename", "log-a", "log-c")
	if code != 0 || !strings.Contains(errs, "level=INFO msg=\"vm renamed\"") {
		t.Errorf("text log: exit %d, stderr %q", code, errs)
	}
	c.ok("rm", "log-c")
}
