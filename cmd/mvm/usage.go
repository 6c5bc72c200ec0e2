package main

import (
	"errors"
	"fmt"
	"regexp"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	microvm "github.com/mvm-dev/microvm"
)

// flagError turns a flag parsing error into a usage error in the command
// line's terms: a value that does not parse names the flag and what it
// wants (`--vcpus: "abc" is not a whole number`), not the parser's
// internals.
func flagError(_ *cobra.Command, err error) error {
	var ive *pflag.InvalidValueError
	if !errors.As(err, &ive) {
		return &usageError{err}
	}
	f := ive.GetFlag()
	want := map[string]string{
		"int":         "a whole number",
		"int64":       "a whole number",
		"uint32":      "a whole number from 0 to " + strconv.FormatUint(1<<32-1, 10),
		"duration":    "a duration such as 30s, 1m30s or 0",
		"bool":        "true or false",
		"stringArray": "text",
	}[f.Value.Type()]
	if want == "" {
		want = "a " + f.Value.Type()
	}
	return usagef("--%s: %q is not %s (%s)", f.Name, ive.GetValue(), want, f.Usage)
}

// nonNegative refuses a negative count or duration given to flag.
func nonNegative[T ~int | ~int64](flag string, v T) error {
	if v < 0 {
		return usagef("%s must be 0 or more (got %v)", flag, v)
	}
	return nil
}

// nonEmptyArgs refuses positional arguments given as "" (an empty VM or
// snapshot name would otherwise mean "any" to some calls). names are the
// arguments' names in order, as in the command's usage line.
func nonEmptyArgs(cmd *cobra.Command, args []string, names string) error {
	fields := strings.Fields(strings.NewReplacer("[", "", "]", "").Replace(names))
	for i, a := range args {
		if a != "" {
			continue
		}
		name := "argument " + strconv.Itoa(i+1)
		if i < len(fields) {
			name = fields[i]
		}
		return usagef("%s: %s must not be empty", cmd.Name(), name)
	}
	return nil
}

// specFlags names, for `mvm create`, the flag behind each field of a
// microvm.Spec that Validate or a runtime may refuse.
var specFlags = []struct {
	field *regexp.Regexp
	flag  string
}{
	{regexp.MustCompile(`^kernel$`), "--kernel"},
	{regexp.MustCompile(`^root_drive\.image$`), "--image"},
	{regexp.MustCompile(`^root_drive\.size_bytes$`), "--disk-size"},
	{regexp.MustCompile(`^root_drive\.`), "--rootfs"},
	{regexp.MustCompile(`^drives\[(\d+)\]\.`), "--drive"},
	{regexp.MustCompile(`^vcpus$`), "--vcpus"},
	{regexp.MustCompile(`^memory_mib$`), "--memory"},
	{regexp.MustCompile(`^boot_args$`), "--boot-args"},
	{regexp.MustCompile(`^labels`), "--label"},
	{regexp.MustCompile(`^vsock\.cid$`), "--vsock-cid"},
}

// inFlagTerms rewrites the problems of a *microvm.SpecError made from the
// flags of `mvm create` in terms of those flags ("--memory: must be at
// least 1 (got 0)"; "--drive 2 (/x): is the same image as --rootfs ...").
// Other errors are returned as they are. The result still matches
// microvm.ErrInvalidSpec.
func inFlagTerms(err error, spec microvm.Spec) error {
	var se *microvm.SpecError
	if !errors.As(err, &se) {
		return err
	}
	parts := make([]string, len(se.Problems))
	for i, p := range se.Problems {
		parts[i] = flagOfField(p.Field, spec) + ": " + rulesInFlagTerms(p.Rule, spec)
	}
	return &flagSpecError{msg: strings.Join(parts, "; "), err: err}
}

// flagSpecError is a *microvm.SpecError told in flags; it matches what
// the SpecError matches.
type flagSpecError struct {
	msg string
	err error
}

func (e *flagSpecError) Error() string { return e.msg }
func (e *flagSpecError) Unwrap() error { return e.err }

func flagOfField(field string, spec microvm.Spec) string {
	for _, f := range specFlags {
		m := f.field.FindStringSubmatch(field)
		if m == nil {
			continue
		}
		if len(m) == 2 {
			n, _ := strconv.Atoi(m[1])
			path := ""
			if n < len(spec.Drives) {
				path = spec.Drives[n].Path
			}
			return fmt.Sprintf("--drive %d (%s)", n+1, path)
		}
		return f.flag
	}
	return field
}

// fieldRef finds spec field names quoted inside a rule.
var fieldRef = regexp.MustCompile(`\b(root_drive\.path|drives\[\d+\]\.path)\b`)

func rulesInFlagTerms(rule string, spec microvm.Spec) string {
	return fieldRef.ReplaceAllStringFunc(rule, func(f string) string { return flagOfField(f, spec) })
}
