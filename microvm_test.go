package microvm

import (
	"encoding/json"
	"errors"
	"fmt"
	"go/parser"
	"go/token"
	"io/fs"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"
)

// ---------------------------------------------------------------------------
// Ids

func TestValidateID(t *testing.T) {
	valid := []string{"a", "Z", "0", "a-b", "web-1", "a-", "1-2-3", "ABC-def-123", strings.Repeat("x", MaxIDLen)}
	for _, id := range valid {
		if err := ValidateID(id); err != nil {
			t.Errorf("ValidateID(%q) = %v, want nil", id, err)
		}
		if err := ValidateSnapshotID(id); err != nil {
			t.Errorf("ValidateSnapshotID(%q) = %v, want nil", id, err)
		}
	}
	invalid := []struct {
		id   string
		rule string // a substring of the rule
	}{
		{"", "must not be empty"},
		{strings.Repeat("x", MaxIDLen+1), "must be at most 64 characters (got 65)"},
		{"-a", "must not start with '-'"},
		{"-", "must not start with '-'"},
		{"a_b", `bad character "_" at offset 1`},
		{"a/b", `bad character "/" at offset 1`},
		{"../x", `bad character "." at offset 0`},
		{".", `bad character "."`},
		{"a.b", `bad character "."`},
		{"é", `bad character "é" at offset 0`},
		{"ab日本", `bad character "日" at offset 2`},
		{"a b", `bad character " " at offset 1`},
		{"a\n", `bad character "\n" at offset 1`},
		{"a\x00b", `bad character "\x00" at offset 1`},
		{"a\xff", `bad character "\xff" at offset 1`},
		{"a:b", `bad character ":"`},
	}
	for _, c := range invalid {
		for _, v := range []struct {
			field    string
			validate func(string) error
		}{{"id", ValidateID}, {"snapshot id", ValidateSnapshotID}} {
			err := v.validate(c.id)
			if !errors.Is(err, ErrInvalidID) {
				t.Errorf("validate %s %q = %v, want ErrInvalidID", v.field, c.id, err)
				continue
			}
			var ie *IDError
			if !errors.As(err, &ie) {
				t.Errorf("validate %s %q: %T is not an *IDError", v.field, c.id, err)
				continue
			}
			if ie.Field != v.field || ie.ID != c.id || !strings.Contains(ie.Rule, c.rule) {
				t.Errorf("validate %s %q = IDError{Field: %q, ID: %q, Rule: %q}, want field %q, rule containing %q",
					v.field, c.id, ie.Field, ie.ID, ie.Rule, v.field, c.rule)
			}
			if want := fmt.Sprintf("invalid %s %q: ", v.field, c.id); len(c.id) <= 80 && !strings.HasPrefix(err.Error(), want) {
				t.Errorf("message %q does not start with %q", err, want)
			}
		}
	}
}

func TestIDErrorTruncatesLongIDs(t *testing.T) {
	err := ValidateID(strings.Repeat("y", 200))
	want := `invalid id "` + strings.Repeat("y", 80) + `...": must be at most 64 characters (got 200)`
	if err.Error() != want {
		t.Errorf("message = %q\nwant      %q", err, want)
	}
}

// ---------------------------------------------------------------------------
// Statuses and the transition table

func TestStatusesAndOps(t *testing.T) {
	want := []Status{"created", "running", "paused", "stopped", "failed", "destroyed"}
	if got := Statuses(); !slices.Equal(got, want) {
		t.Errorf("Statuses() = %q, want %q", got, want)
	}
	for _, s := range want {
		if !s.Valid() {
			t.Errorf("%q.Valid() = false", s)
		}
	}
	for _, s := range []Status{"", "Running", "deleted"} {
		if s.Valid() {
			t.Errorf("%q.Valid() = true", s)
		}
	}
	if got := Ops(); !slices.Equal(got, []Op{"start", "stop", "pause", "resume", "snapshot", "destroy", "crash", "shutdown"}) {
		t.Errorf("Ops() = %q", got)
	}
	// Statuses returns a fresh slice each time.
	Statuses()[0] = "mutated"
	if Statuses()[0] != StatusCreated {
		t.Error("Statuses() shares its backing array")
	}
}

// wantTable is the transition table written out independently of
// status.go: for each status, the operations it allows and where they
// lead. Anything not listed is refused.
var wantTable = map[Status]map[Op]Status{
	StatusCreated: {OpStart: StatusRunning, OpDestroy: StatusDestroyed},
	StatusRunning: {OpStop: StatusStopped, OpPause: StatusPaused, OpSnapshot: StatusRunning,
		OpDestroy: StatusDestroyed, OpCrash: StatusFailed, OpShutdown: StatusStopped},
	StatusPaused: {OpStop: StatusStopped, OpResume: StatusRunning, OpSnapshot: StatusPaused,
		OpDestroy: StatusDestroyed, OpCrash: StatusFailed, OpShutdown: StatusStopped},
	StatusStopped:   {OpStart: StatusRunning, OpDestroy: StatusDestroyed},
	StatusFailed:    {OpStart: StatusRunning, OpDestroy: StatusDestroyed},
	StatusDestroyed: {},
}

func TestTransition(t *testing.T) {
	statuses := append(Statuses(), "", "bogus")
	ops := append(Ops(), "", "reboot")
	for _, from := range statuses {
		for _, op := range ops {
			to, err := Transition("vm-1", from, op)
			want, allowed := wantTable[from][op]
			if allowed {
				if err != nil || to != want {
					t.Errorf("Transition(%s, %s) = %q, %v; want %q", from, op, to, err, want)
				}
				continue
			}
			if err == nil {
				t.Errorf("Transition(%s, %s) = %q, nil; want a refusal", from, op, to)
				continue
			}
			if to != "" {
				t.Errorf("Transition(%s, %s) refused but returned status %q", from, op, to)
			}
			var te *TransitionError
			if !errors.As(err, &te) {
				t.Errorf("Transition(%s, %s): %T is not a *TransitionError", from, op, err)
				continue
			}
			if te.ID != "vm-1" || te.From != from || te.Op != op || te.To != transitions[op].to {
				t.Errorf("Transition(%s, %s) = %+v", from, op, *te)
			}
			if !errors.Is(err, ErrInvalidTransition) || errors.Is(err, ErrNotFound) {
				t.Errorf("Transition(%s, %s): errors.Is is wrong for %v", from, op, err)
			}
		}
	}
}

// TestDocTable checks that the table in the package documentation says
// what Transition does.
func TestDocTable(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "doc.go", nil, parser.ParseComments|parser.PackageClauseOnly)
	if err != nil {
		t.Fatal(err)
	}
	ops := map[string]Op{"Start": OpStart, "Stop": OpStop, "Pause": OpPause, "Resume": OpResume,
		"Snapshot": OpSnapshot, "Destroy": OpDestroy, "(crash)": OpCrash, "(shutdown)": OpShutdown}
	cols := regexp.MustCompile(`\s{2,}`)
	seen := map[Op]bool{}
	for line := range strings.Lines(f.Doc.Text()) {
		fields := cols.Split(strings.TrimSpace(line), -1)
		op, ok := ops[fields[0]]
		if !ok || len(fields) != 3 {
			continue
		}
		seen[op] = true
		var from []Status
		if fields[1] == "any" {
			from = slices.DeleteFunc(Statuses(), func(s Status) bool { return s == StatusDestroyed })
		} else {
			for _, s := range strings.Split(fields[1], ", ") {
				from = append(from, Status(s))
			}
		}
		for _, s := range Statuses() {
			to, err := Transition("x", s, op)
			if documented := slices.Contains(from, s); documented != (err == nil) {
				t.Errorf("doc table says %s from %s is allowed=%v; Transition says %v", op, s, documented, err)
			}
			if err == nil && op != OpSnapshot && !strings.HasPrefix(fields[2], string(to)) {
				t.Errorf("doc table says %s leads to %q; Transition says %s", op, fields[2], to)
			}
		}
	}
	for _, op := range Ops() {
		if !seen[op] {
			t.Errorf("the doc table has no row for %s", op)
		}
	}
}

func TestTransitionErrorMessage(t *testing.T) {
	for _, c := range []struct {
		from Status
		op   Op
		want string
	}{
		{StatusCreated, OpPause, `cannot pause vm "a": it is created, not running`},
		{StatusStopped, OpSnapshot, `cannot snapshot vm "a": it is stopped, not running or paused`},
		{StatusRunning, OpStart, `cannot start vm "a": it is running, not created, stopped or failed`},
		{StatusDestroyed, OpDestroy, `cannot destroy vm "a": it is destroyed, not created, running, paused, stopped or failed`},
		{StatusRunning, "reboot", `cannot reboot vm "a": no status allows it (it is running)`},
	} {
		_, err := Transition("a", c.from, c.op)
		if err == nil || err.Error() != c.want {
			t.Errorf("Transition(%s, %s) error = %v\nwant %s", c.from, c.op, err, c.want)
		}
	}
}

// ---------------------------------------------------------------------------
// Spec.Validate

// minimalSpec is the smallest valid spec.
func minimalSpec() Spec {
	return Spec{Kernel: "/boot/vmlinux", RootDrive: Drive{Path: "/var/lib/rootfs.ext4"}, VCPUs: 1, MemoryMiB: 128}
}

// fullSpec is a valid spec that sets every field.
func fullSpec() Spec {
	bucket := func(n int64) *TokenBucket { return &TokenBucket{Size: n, OneTimeBurst: n, RefillTime: time.Second} }
	rl := func() *RateLimiter { return &RateLimiter{Bandwidth: bucket(1 << 20), Ops: bucket(100)} }
	return Spec{
		Kernel:    "/boot/vmlinux",
		Initrd:    "/boot/initrd",
		BootArgs:  "console=ttyS0",
		RootDrive: Drive{ID: "root", Path: "/rootfs.ext4", RateLimiter: rl()},
		Drives: []Drive{
			{ID: "data", Path: "/data.ext4", RateLimiter: rl()},
			{ID: "scratch_1", Path: "/scratch.ext4", ReadOnly: true},
		},
		VCPUs:           4,
		MemoryMiB:       256,
		SMT:             true,
		HugePages:       HugePages2M,
		TrackDirtyPages: true,
		Network: []NetworkInterface{
			{ID: "eth0", GuestMAC: "02:FC:00:00:00:01", RxRateLimiter: rl(), TxRateLimiter: rl(),
				Egress: &EgressPolicy{DenyAll: true, Allow: []EgressRule{
					{CIDR: netip.MustParsePrefix("10.0.0.0/8")},
					{CIDR: netip.MustParsePrefix("1.1.1.1/32"), Protocol: "udp", FromPort: 53},
					{CIDR: netip.MustParsePrefix("203.0.113.0/24"), Protocol: "tcp", FromPort: 80, ToPort: 443},
					{CIDR: netip.MustParsePrefix("0.0.0.0/0"), Protocol: "icmp"},
				}}},
			{ID: "eth1", HostDevName: "tap-extra", GuestMAC: "02:fc:00:00:00:02"},
		},
		Vsock:  &Vsock{CID: 42, Path: "/run/mvm/v.sock"},
		MMDS:   &MMDS{Version: "V1", Address: "169.254.170.2", Interfaces: []string{"eth1"}, Data: json.RawMessage(`{"a":{"b":1}}`)},
		Labels: map[string]string{"app": "web", "team": ""},
	}
}

func TestValidateAcceptsValidSpecs(t *testing.T) {
	for name, s := range map[string]Spec{"minimal": minimalSpec(), "full": fullSpec()} {
		if err := s.WithDefaults().Validate(); err != nil {
			t.Errorf("%s spec: %v", name, err)
		}
		if err := s.Validate(); err != nil && name == "full" {
			t.Errorf("%s spec without defaults: %v", name, err)
		}
	}
	s := minimalSpec()
	s.VCPUs, s.SMT = 1, true // 1 is allowed with SMT
	if err := s.WithDefaults().Validate(); err != nil {
		t.Errorf("1 vCPU with SMT: %v", err)
	}
	s = minimalSpec()
	s.VCPUs, s.MemoryMiB = MaxVCPUs, 1
	s.BootArgs = strings.Repeat("a", MaxBootArgsLen)
	if err := s.WithDefaults().Validate(); err != nil {
		t.Errorf("limits: %v", err)
	}
}

func TestValidateRules(t *testing.T) {
	long := func(n int) string { return strings.Repeat("a", n) }
	withNet := func(n ...NetworkInterface) func(*Spec) { return func(s *Spec) { s.Network = n } }
	unmanagedMAC := func(mac string) func(*Spec) {
		return withNet(NetworkInterface{ID: "eth0", HostDevName: "tap0", GuestMAC: mac})
	}
	rule := func(r EgressRule) func(*Spec) {
		return withNet(NetworkInterface{ID: "eth0", Egress: &EgressPolicy{Allow: []EgressRule{r}}})
	}
	mmds := func(m MMDS) func(*Spec) {
		return func(s *Spec) {
			s.Network = []NetworkInterface{{ID: "eth0", HostDevName: "tap0"}}
			if m.Version == "" {
				m.Version = "V2"
			}
			if m.Address == "" {
				m.Address = DefaultMMDSAddress
			}
			if m.Interfaces == nil {
				m.Interfaces = []string{"eth0"}
			}
			s.MMDS = &m
		}
	}
	bucket := func(b TokenBucket) func(*Spec) {
		return func(s *Spec) { s.RootDrive.RateLimiter = &RateLimiter{Bandwidth: &b} }
	}
	cidr := netip.MustParsePrefix
	cases := []struct {
		name   string
		mutate func(*Spec)
		fields []string // exactly the fields reported
		rule   string   // a substring of the first problem's rule
	}{
		{"kernel missing", func(s *Spec) { s.Kernel = "" }, []string{"kernel"}, "is required"},
		{"kernel NUL", func(s *Spec) { s.Kernel = "/a\x00" }, []string{"kernel"}, "NUL"},
		{"kernel too long", func(s *Spec) { s.Kernel = "/" + long(4095) }, []string{"kernel"}, "4095"},
		{"initrd NUL", func(s *Spec) { s.Initrd = "\x00" }, []string{"initrd"}, "NUL"},
		{"boot args too long", func(s *Spec) { s.BootArgs = long(MaxBootArgsLen + 1) }, []string{"boot_args"}, "at most 2047 bytes (got 2048)"},
		{"boot args newline", func(s *Spec) { s.BootArgs = "a\nb" }, []string{"boot_args"}, "newline"},
		{"boot args NUL", func(s *Spec) { s.BootArgs = "a\x00" }, []string{"boot_args"}, "NUL"},
		{"root drive id missing", func(s *Spec) { s.RootDrive.ID = "" }, []string{"root_drive.id"}, "is required"},
		{"root drive id dash", func(s *Spec) { s.RootDrive.ID = "root-fs" }, []string{"root_drive.id"}, "letters, digits and '_'"},
		{"root drive id too long", func(s *Spec) { s.RootDrive.ID = long(65) }, []string{"root_drive.id"}, "at most 64"},
		{"root drive path missing", func(s *Spec) { s.RootDrive.Path = "" }, []string{"root_drive.path"}, "is required"},
		{"drive path missing", func(s *Spec) { s.Drives = []Drive{{ID: "d"}} }, []string{"drives[0].path"}, "is required"},
		{"drive id of the root drive", func(s *Spec) { s.Drives = []Drive{{ID: "rootfs", Path: "/d"}} },
			[]string{"drives[0].id"}, `"rootfs" is also used by root_drive`},
		{"duplicate drive ids", func(s *Spec) { s.Drives = []Drive{{ID: "d", Path: "/d"}, {ID: "d", Path: "/e"}} },
			[]string{"drives[1].id"}, "also used by drives[0]"},
		{"vcpus zero", func(s *Spec) { s.VCPUs = 0 }, []string{"vcpus"}, "between 1 and 32 (got 0)"},
		{"vcpus negative", func(s *Spec) { s.VCPUs = -1 }, []string{"vcpus"}, "got -1"},
		{"vcpus 33", func(s *Spec) { s.VCPUs = 33 }, []string{"vcpus"}, "got 33"},
		{"vcpus odd with smt", func(s *Spec) { s.VCPUs, s.SMT = 3, true }, []string{"vcpus"}, "1 or even"},
		{"memory zero", func(s *Spec) { s.MemoryMiB = 0 }, []string{"memory_mib"}, "at least 1"},
		{"memory negative", func(s *Spec) { s.MemoryMiB = -5 }, []string{"memory_mib"}, "got -5"},
		{"memory odd with 2M pages", func(s *Spec) { s.MemoryMiB, s.HugePages = 127, HugePages2M }, []string{"memory_mib"}, "multiple of 2"},
		{"huge pages unknown", func(s *Spec) { s.HugePages = "1G" }, []string{"huge_pages"}, `"1G"`},
		{"network id missing", withNet(NetworkInterface{HostDevName: "tap0"}), []string{"network[0].id"}, "is required"},
		{"network id bad", withNet(NetworkInterface{ID: "eth.0", HostDevName: "tap0"}), []string{"network[0].id"}, "letters"},
		{"network ids duplicate", withNet(NetworkInterface{ID: "e", HostDevName: "tap0"}, NetworkInterface{ID: "e", HostDevName: "tap1"}),
			[]string{"network[1].id"}, "unique"},
		{"two managed interfaces", withNet(NetworkInterface{ID: "a"}, NetworkInterface{ID: "b"}),
			[]string{"network[1].host_dev_name"}, "at most one interface"},
		{"host dev name too long", withNet(NetworkInterface{ID: "e", HostDevName: long(16)}),
			[]string{"network[0].host_dev_name"}, "at most 15"},
		{"host dev name slash", withNet(NetworkInterface{ID: "e", HostDevName: "a/b"}), []string{"network[0].host_dev_name"}, "'/'"},
		{"host dev name space", withNet(NetworkInterface{ID: "e", HostDevName: "a b"}), []string{"network[0].host_dev_name"}, "spaces"},
		{"host dev name colon", withNet(NetworkInterface{ID: "e", HostDevName: "a:b"}), []string{"network[0].host_dev_name"}, "':'"},
		{"host dev name non-ASCII", withNet(NetworkInterface{ID: "e", HostDevName: "tâp"}), []string{"network[0].host_dev_name"}, "network device name"},
		{"egress on unmanaged", withNet(NetworkInterface{ID: "e", HostDevName: "tap0", Egress: &EgressPolicy{}}),
			[]string{"network[0].egress"}, "only allowed on a managed interface"},
		{"mac garbage", unmanagedMAC("zz:zz:zz:zz:zz:zz"), []string{"network[0].guest_mac"}, `"xx:xx:xx:xx:xx:xx"`},
		{"mac short", unmanagedMAC("02:00:00:00:00"), []string{"network[0].guest_mac"}, "MAC address"},
		{"mac leading space", unmanagedMAC(" 2:00:00:00:00:01"), []string{"network[0].guest_mac"}, "MAC address"},
		{"mac inner space", unmanagedMAC("02:00:00:00:00: 1"), []string{"network[0].guest_mac"}, "MAC address"},
		{"mac trailing space", unmanagedMAC("02:00:00:00:00:1 "), []string{"network[0].guest_mac"}, "MAC address"},
		{"mac sign", unmanagedMAC("+2:00:00:00:00:01"), []string{"network[0].guest_mac"}, "MAC address"},
		{"mac dashes", unmanagedMAC("02-00-00-00-00-01"), []string{"network[0].guest_mac"}, "MAC address"},
		{"mac multicast", unmanagedMAC("01:00:5e:00:00:01"), []string{"network[0].guest_mac"}, "unicast"},
		{"rx rate limiter", withNet(NetworkInterface{ID: "e", HostDevName: "t", RxRateLimiter: &RateLimiter{Ops: &TokenBucket{Size: -1}}}),
			[]string{"network[0].rx_rate_limiter.ops.size"}, ">= 0"},
		{"tx rate limiter", withNet(NetworkInterface{ID: "e", HostDevName: "t", TxRateLimiter: &RateLimiter{Ops: &TokenBucket{Size: 1}}}),
			[]string{"network[0].tx_rate_limiter.ops.refill_time"}, "at least 1ms"},
		{"bucket size negative", bucket(TokenBucket{Size: -1}), []string{"root_drive.rate_limiter.bandwidth.size"}, "got -1"},
		{"bucket burst negative", bucket(TokenBucket{OneTimeBurst: -1}), []string{"root_drive.rate_limiter.bandwidth.one_time_burst"}, "got -1"},
		{"bucket refill negative", bucket(TokenBucket{RefillTime: -time.Millisecond}), []string{"root_drive.rate_limiter.bandwidth.refill_time"}, ">= 0"},
		{"bucket refill sub-ms", bucket(TokenBucket{Size: 1, RefillTime: 1500 * time.Microsecond}),
			[]string{"root_drive.rate_limiter.bandwidth.refill_time"}, "whole number of milliseconds"},
		{"bucket refill missing", bucket(TokenBucket{Size: 1}), []string{"root_drive.rate_limiter.bandwidth.refill_time"}, "at least 1ms"},
		{"egress cidr missing", rule(EgressRule{}), []string{"network[0].egress.allow[0].cidr"}, "is required"},
		{"egress cidr host bits", rule(EgressRule{CIDR: cidr("10.1.2.3/8")}), []string{"network[0].egress.allow[0].cidr"}, "want 10.0.0.0/8"},
		{"egress cidr ipv6", rule(EgressRule{CIDR: cidr("2001:db8::/32")}), []string{"network[0].egress.allow[0].cidr"}, "IPv4 only"},
		{"egress cidr ipv4-mapped", rule(EgressRule{CIDR: cidr("::ffff:10.0.0.0/104")}), []string{"network[0].egress.allow[0].cidr"}, "IPv4 only"},
		{"egress protocol", rule(EgressRule{CIDR: cidr("0.0.0.0/0"), Protocol: "TCP"}), []string{"network[0].egress.allow[0].protocol"}, `"TCP"`},
		{"egress ports without protocol", rule(EgressRule{CIDR: cidr("0.0.0.0/0"), FromPort: 1}),
			[]string{"network[0].egress.allow[0].from_port"}, "tcp or udp"},
		{"egress ports with icmp", rule(EgressRule{CIDR: cidr("0.0.0.0/0"), Protocol: "icmp", FromPort: 1}),
			[]string{"network[0].egress.allow[0].from_port"}, "tcp or udp"},
		{"egress to port alone", rule(EgressRule{CIDR: cidr("0.0.0.0/0"), Protocol: "tcp", ToPort: 80}),
			[]string{"network[0].egress.allow[0].from_port"}, "must be set when to_port is set"},
		{"egress port range reversed", rule(EgressRule{CIDR: cidr("0.0.0.0/0"), Protocol: "udp", FromPort: 90, ToPort: 80}),
			[]string{"network[0].egress.allow[0].to_port"}, "90"},
		{"vsock cid", func(s *Spec) { s.Vsock = &Vsock{CID: 2} }, []string{"vsock.cid"}, "at least 3 (got 2)"},
		{"vsock path too long", func(s *Spec) { s.Vsock = &Vsock{CID: 3, Path: "/" + long(107)} }, []string{"vsock.path"}, "107"},
		{"vsock path NUL", func(s *Spec) { s.Vsock = &Vsock{CID: 3, Path: "a\x00"} }, []string{"vsock.path"}, "NUL"},
		{"mmds version", mmds(MMDS{Version: "v2"}), []string{"mmds.version"}, `"v2"`},
		{"mmds address not IPv4", mmds(MMDS{Address: "fe80::1"}), []string{"mmds.address"}, "link-local IPv4"},
		{"mmds address not link-local", mmds(MMDS{Address: "10.0.0.1"}), []string{"mmds.address"}, "169.254.1.0 to 169.254.254.255"},
		{"mmds address reserved low", mmds(MMDS{Address: "169.254.0.5"}), []string{"mmds.address"}, "169.254.0.5"},
		{"mmds address reserved high", mmds(MMDS{Address: "169.254.255.1"}), []string{"mmds.address"}, "169.254.255.1"},
		{"mmds address garbage", mmds(MMDS{Address: "metadata"}), []string{"mmds.address"}, `"metadata"`},
		{"mmds interfaces empty", mmds(MMDS{Interfaces: []string{}}), []string{"mmds.interfaces"}, "at least one"},
		{"mmds interface unknown", mmds(MMDS{Interfaces: []string{"eth0", "eth9"}}), []string{"mmds.interfaces[1]"}, `"eth9"`},
		{"mmds data array", mmds(MMDS{Data: json.RawMessage(`[]`)}), []string{"mmds.data"}, "JSON object"},
		{"mmds data null", mmds(MMDS{Data: json.RawMessage(`null`)}), []string{"mmds.data"}, "JSON object"},
		{"mmds data invalid", mmds(MMDS{Data: json.RawMessage(`{`)}), []string{"mmds.data"}, "JSON object"},
		{"labels too many", func(s *Spec) {
			s.Labels = map[string]string{}
			for i := range 65 {
				s.Labels[fmt.Sprint(i)] = ""
			}
		}, []string{"labels"}, "at most 64 entries (got 65)"},
		{"label key empty", func(s *Spec) { s.Labels = map[string]string{"": "x"} }, []string{"labels"}, "keys must be 1 to 128 bytes (got 0)"},
		{"label key too long", func(s *Spec) { s.Labels = map[string]string{long(129): "x"} }, []string{"labels"}, "got 129"},
		{"label value too long", func(s *Spec) { s.Labels = map[string]string{"k": long(1025)} }, []string{"labels[k]"}, "at most 1024 bytes"},
	}
	if host := hostMemoryMiB(); host > 0 {
		cases = append(cases, struct {
			name   string
			mutate func(*Spec)
			fields []string
			rule   string
		}{"memory beyond host", func(s *Spec) { s.MemoryMiB = int(host) + 1 }, []string{"memory_mib"}, "host's"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := minimalSpec().WithDefaults()
			c.mutate(&s)
			err := s.Validate()
			var se *SpecError
			if !errors.As(err, &se) || !errors.Is(err, ErrInvalidSpec) {
				t.Fatalf("Validate = %v, want a *SpecError", err)
			}
			var fields []string
			for _, p := range se.Problems {
				fields = append(fields, p.Field)
			}
			if !slices.Equal(fields, c.fields) {
				t.Errorf("fields = %q, want %q (%v)", fields, c.fields, err)
			}
			if !strings.Contains(se.Problems[0].Rule, c.rule) {
				t.Errorf("rule = %q, want it to contain %q", se.Problems[0].Rule, c.rule)
			}
			for _, f := range c.fields {
				if !se.Has(f) {
					t.Errorf("Has(%q) = false", f)
				}
			}
			if se.Has("nonexistent") {
				t.Error(`Has("nonexistent") = true`)
			}
		})
	}
}

// TestValidateSharedImage: one image behind two drives of a VM is refused
// unless both are read-only, whatever path names it (the same file by
// device and inode: a symlink, a hard link, a path with "." in it), with
// an error naming both fields.
func TestValidateSharedImage(t *testing.T) {
	dir := t.TempDir()
	img := filepath.Join(dir, "disk.ext4")
	if err := os.WriteFile(img, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link.ext4")
	hard := filepath.Join(dir, "hard.ext4")
	other := filepath.Join(dir, "other.ext4")
	if err := os.Symlink(img, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Link(img, hard); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(other, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	spec := func(root Drive, drives ...Drive) Spec {
		s := minimalSpec()
		s.RootDrive, s.Drives = root, drives
		return s.WithDefaults()
	}
	for _, c := range []struct {
		name  string
		s     Spec
		field string // "" when accepted
		other string
	}{
		{"same path twice", spec(Drive{Path: "/r"}, Drive{Path: img}, Drive{Path: img}), "drives[1].path", "drives[0].path"},
		{"rootfs again", spec(Drive{Path: img}, Drive{Path: img}), "drives[0].path", "root_drive.path"},
		{"symlink", spec(Drive{Path: img}, Drive{Path: link}), "drives[0].path", "root_drive.path"},
		{"hard link", spec(Drive{Path: img}, Drive{Path: hard, ReadOnly: true}), "drives[0].path", "root_drive.path"},
		{"dot path", spec(Drive{Path: img}, Drive{Path: dir + "/./disk.ext4", ReadOnly: true}), "drives[0].path", "root_drive.path"},
		{"missing file, same path", spec(Drive{Path: "/no/such"}, Drive{Path: "/no//such"}), "drives[0].path", "root_drive.path"},
		{"both read-only", spec(Drive{Path: img, ReadOnly: true}, Drive{Path: link, ReadOnly: true}), "", ""},
		{"different files", spec(Drive{Path: img}, Drive{Path: other}), "", ""},
	} {
		err := c.s.Validate()
		if c.field == "" {
			if err != nil {
				t.Errorf("%s: %v, want accepted", c.name, err)
			}
			continue
		}
		var se *SpecError
		if !errors.As(err, &se) || !se.Has(c.field) || !strings.Contains(err.Error(), c.other) {
			t.Errorf("%s: %v; want a problem at %s naming %s", c.name, err, c.field, c.other)
		}
	}
}

func TestValidateReportsEveryProblem(t *testing.T) {
	err := Spec{}.Validate()
	want := "invalid spec: kernel: is required; root_drive.id: is required; root_drive.path: is required; " +
		"vcpus: must be between 1 and 32 (got 0); memory_mib: must be at least 1 (got 0)"
	if err == nil || err.Error() != want {
		t.Errorf("Spec{}.Validate() = %v\nwant %s", err, want)
	}
	if err := (Spec{}).WithDefaults().Validate(); err == nil || strings.Contains(err.Error(), "root_drive.id") {
		t.Errorf("defaulted zero spec: %v, want no root_drive.id problem", err)
	}
}

// ---------------------------------------------------------------------------
// WithDefaults and Clone

func TestWithDefaults(t *testing.T) {
	s := Spec{
		Drives:  []Drive{{Path: "/a"}, {ID: "named", Path: "/b"}, {Path: "/c"}},
		Network: []NetworkInterface{{}, {ID: "custom", HostDevName: "tap0"}, {HostDevName: "tap1"}},
		Vsock:   &Vsock{},
		MMDS:    &MMDS{},
	}
	orig := mustJSON(t, s)
	d := s.WithDefaults()
	if got := mustJSON(t, s); got != orig {
		t.Errorf("WithDefaults changed its receiver:\n%s\nwas\n%s", got, orig)
	}
	checks := []struct {
		name      string
		got, want any
	}{
		{"BootArgs", d.BootArgs, DefaultBootArgs},
		{"RootDrive.ID", d.RootDrive.ID, DefaultRootDriveID},
		{"Drives ids", []string{d.Drives[0].ID, d.Drives[1].ID, d.Drives[2].ID}, []string{"drive1", "named", "drive3"}},
		{"Network ids", []string{d.Network[0].ID, d.Network[1].ID, d.Network[2].ID}, []string{"eth0", "custom", "eth2"}},
		{"Vsock.CID", d.Vsock.CID, uint32(DefaultVsockCID)},
		{"MMDS.Version", d.MMDS.Version, "V2"},
		{"MMDS.Address", d.MMDS.Address, DefaultMMDSAddress},
		{"MMDS.Interfaces", d.MMDS.Interfaces, []string{"eth0", "custom", "eth2"}},
		{"VCPUs", d.VCPUs, 0},
		{"MemoryMiB", d.MemoryMiB, 0},
	}
	for _, c := range checks {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("%s = %v, want %v", c.name, c.got, c.want)
		}
	}
	// Set fields are kept.
	full := fullSpec()
	if got, want := mustJSON(t, full.WithDefaults()), mustJSON(t, full); got != want {
		t.Errorf("WithDefaults changed a fully set spec:\n%s\nwant\n%s", got, want)
	}
	// Idempotent, and nil sections stay nil.
	if a, b := mustJSON(t, d), mustJSON(t, d.WithDefaults()); a != b {
		t.Errorf("WithDefaults is not idempotent:\n%s\n%s", a, b)
	}
	if m := minimalSpec().WithDefaults(); m.Vsock != nil || m.MMDS != nil || m.Drives != nil || m.Network != nil || m.Labels != nil {
		t.Errorf("WithDefaults made optional sections: %+v", m)
	}
	// The result does not alias the receiver.
	d.Drives[0].Path = "/changed"
	d.Network[0].GuestMAC = "changed"
	d.MMDS.Interfaces[0] = "changed"
	d.Vsock.Path = "changed"
	if got := mustJSON(t, s); got != orig {
		t.Errorf("changing WithDefaults' result changed its receiver:\n%s\nwas\n%s", got, orig)
	}
}

func TestClone(t *testing.T) {
	s := fullSpec()
	c := s.Clone()
	if !reflect.DeepEqual(s, c) {
		t.Fatalf("Clone differs:\n%+v\n%+v", s, c)
	}
	noSharedMemory(t, "Spec", reflect.ValueOf(s), reflect.ValueOf(c))

	// Every reference field, set by reflection so that fields added later
	// are covered too.
	var f Spec
	fill(reflect.ValueOf(&f).Elem())
	noSharedMemory(t, "Spec", reflect.ValueOf(f), reflect.ValueOf(f.Clone()))
	if !reflect.DeepEqual(f, f.Clone()) {
		t.Error("Clone of a filled spec differs from it")
	}

	// Nil stays nil; empty stays empty where the JSON form cannot tell.
	var z Spec
	if got := z.Clone(); !reflect.DeepEqual(got, z) {
		t.Errorf("Clone of the zero spec = %+v", got)
	}
}

// fill sets every settable field of v, recursively: strings, numbers,
// booleans, pointers, slices (two elements) and maps (two entries).
func fill(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(p.Elem())
		v.Set(p)
	case reflect.Slice:
		sl := reflect.MakeSlice(v.Type(), 2, 2)
		for i := range 2 {
			fill(sl.Index(i))
		}
		v.Set(sl)
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		for i := range 2 {
			k := reflect.New(v.Type().Key()).Elem()
			if k.Kind() == reflect.String {
				k.SetString(fmt.Sprint("k", i))
			}
			e := reflect.New(v.Type().Elem()).Elem()
			fill(e)
			m.SetMapIndex(k, e)
		}
		v.Set(m)
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Field(i).CanSet() {
				fill(v.Field(i))
			}
		}
	}
}

// noSharedMemory fails if a and b share a pointer, map or slice array.
func noSharedMemory(t *testing.T, path string, a, b reflect.Value) {
	t.Helper()
	switch a.Kind() {
	case reflect.Pointer:
		if a.IsNil() {
			return
		}
		if a.Pointer() == b.Pointer() {
			t.Errorf("%s: the clone shares the pointer", path)
			return
		}
		noSharedMemory(t, path, a.Elem(), b.Elem())
	case reflect.Map:
		if a.IsNil() || a.Len() == 0 {
			return
		}
		if a.Pointer() == b.Pointer() {
			t.Errorf("%s: the clone shares the map", path)
		}
	case reflect.Slice:
		if a.Len() == 0 {
			return
		}
		if a.Pointer() == b.Pointer() {
			t.Errorf("%s: the clone shares the slice's array", path)
			return
		}
		for i := range a.Len() {
			noSharedMemory(t, fmt.Sprintf("%s[%d]", path, i), a.Index(i), b.Index(i))
		}
	case reflect.Struct:
		for i := range a.NumField() {
			if a.Type().Field(i).IsExported() {
				noSharedMemory(t, path+"."+a.Type().Field(i).Name, a.Field(i), b.Field(i))
			}
		}
	}
}

func TestSpecJSON(t *testing.T) {
	s := fullSpec()
	b, err := json.Marshal(s)
	if err != nil {
		t.Fatal(err)
	}
	var back Spec
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(s, back) {
		t.Errorf("JSON round trip differs:\n%+v\n%+v", s, back)
	}
	for _, name := range []string{`"kernel"`, `"root_drive"`, `"vcpus"`, `"memory_mib"`, `"track_dirty_pages"`, `"guest_mac"`, `"refill_time"`} {
		if !strings.Contains(string(b), name) {
			t.Errorf("JSON lacks %s: %s", name, b)
		}
	}
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// ---------------------------------------------------------------------------
// Options

func TestStopTimeout(t *testing.T) {
	for _, c := range []struct {
		opts *StopOptions
		want time.Duration
	}{
		{nil, DefaultStopTimeout},
		{&StopOptions{}, DefaultStopTimeout},
		{&StopOptions{Timeout: time.Millisecond}, time.Millisecond},
	} {
		if got, err := c.opts.StopTimeout(); err != nil || got != c.want {
			t.Errorf("StopTimeout(%+v) = %v, %v; want %v", c.opts, got, err, c.want)
		}
	}
	_, err := (&StopOptions{Timeout: -time.Second}).StopTimeout()
	if !errors.Is(err, ErrInvalidArgument) || err.Error() != "stop options: timeout must be >= 0 (got -1s): invalid argument" {
		t.Errorf("negative timeout: %v", err)
	}
}

func TestSnapshotOptions(t *testing.T) {
	for _, c := range []struct {
		opts *SnapshotOptions
		want error
		typ  SnapshotType
	}{
		{nil, nil, SnapshotFull},
		{&SnapshotOptions{}, nil, SnapshotFull},
		{&SnapshotOptions{Type: SnapshotFull}, nil, SnapshotFull},
		{&SnapshotOptions{Type: SnapshotDiff}, nil, SnapshotDiff},
		{&SnapshotOptions{Type: SnapshotDiff, Parent: "base-1"}, nil, SnapshotDiff},
		{&SnapshotOptions{Type: SnapshotDiff, Parent: "../base"}, ErrInvalidID, SnapshotDiff},
		{&SnapshotOptions{Parent: "base-1"}, ErrInvalidArgument, SnapshotFull},
		{&SnapshotOptions{Type: SnapshotFull, Parent: "base-1"}, ErrInvalidArgument, SnapshotFull},
		{&SnapshotOptions{Type: "Full"}, ErrInvalidArgument, "Full"},
	} {
		err := c.opts.Validate()
		if (c.want == nil) != (err == nil) || (c.want != nil && !errors.Is(err, c.want)) {
			t.Errorf("Validate(%+v) = %v, want %v", c.opts, err, c.want)
		}
		if got := c.opts.SnapshotType(); got != c.typ {
			t.Errorf("SnapshotType(%+v) = %q, want %q", c.opts, got, c.typ)
		}
	}
	err := (&SnapshotOptions{Type: SnapshotDiff, Parent: "a_b"}).Validate()
	if want := `invalid snapshot options: parent "a_b": may contain only letters, digits and '-' (bad character "_" at offset 1)`; err == nil || err.Error() != want {
		t.Errorf("bad parent message = %v\nwant %s", err, want)
	}
}

func TestRestoreOptions(t *testing.T) {
	for _, o := range []*RestoreOptions{nil, {}, {MemoryBackend: MemoryBackendFile}, {MemoryBackend: MemoryBackendUffd, Paused: true, SkipVerify: true},
		{Labels: map[string]string{}}, {Labels: map[string]string{"a": "b"}}} {
		if err := o.Validate(); err != nil {
			t.Errorf("Validate(%+v) = %v", o, err)
		}
	}
	err := (&RestoreOptions{MemoryBackend: "mmap"}).Validate()
	if !errors.Is(err, ErrInvalidArgument) || !strings.Contains(err.Error(), `(got "mmap")`) {
		t.Errorf("bad memory backend: %v", err)
	}
	err = (&RestoreOptions{Labels: map[string]string{"": "x"}}).Validate()
	var se *SpecError
	if !errors.Is(err, ErrInvalidArgument) || !errors.Is(err, ErrInvalidSpec) || !errors.As(err, &se) || !se.Has("labels") {
		t.Errorf("bad labels: %v, want ErrInvalidArgument and a SpecError naming labels", err)
	}
	if want := "restore options: invalid argument: invalid spec: labels: keys must be 1 to 128 bytes (got 0)"; err == nil || err.Error() != want {
		t.Errorf("bad labels message = %v\nwant %s", err, want)
	}
}

// ---------------------------------------------------------------------------
// Errors

func TestErrorMessages(t *testing.T) {
	for _, c := range []struct {
		err  error
		want string
		is   error
	}{
		{&BackendError{Op: "start vm"}, "start vm", ErrBackend},
		{&BackendError{Op: "configure drives", Method: "PUT", Path: "/drives/rootfs", StatusCode: 400,
			Message: "Invalid block device path"}, "configure drives: PUT /drives/rootfs: status 400: Invalid block device path", ErrBackend},
		{&BackendError{Op: "connect", Err: fs.ErrNotExist}, "connect: file does not exist", fs.ErrNotExist},
		{&ExitError{ID: "a", PID: 42, ExitCode: 1}, `vm "a": process 42 exited unexpectedly: exit status 1`, ErrExited},
		{&ExitError{ID: "a", PID: 42, ExitCode: -1, Signal: "SIGKILL"}, `vm "a": process 42 exited unexpectedly: killed by signal SIGKILL`, ErrExited},
		{&ExitError{ID: "a", PID: 42, ExitCode: -1}, `vm "a": process 42 exited unexpectedly: exit status unknown`, ErrExited},
		{&SpecError{Problems: []FieldError{{"vcpus", "must be between 1 and 32 (got 0)"}, {"kernel", "is required"}}},
			"invalid spec: vcpus: must be between 1 and 32 (got 0); kernel: is required", ErrInvalidSpec},
		{FieldError{Field: "kernel", Rule: "is required"}, "kernel: is required", nil},
		{&IDError{Field: "id", ID: "a b", Rule: "r"}, `invalid id "a b": r`, ErrInvalidID},
		{&TransitionError{ID: "a", Op: OpPause, From: StatusCreated, To: StatusPaused},
			`cannot pause vm "a": it is created, not running`, ErrInvalidTransition},
	} {
		if got := c.err.Error(); got != c.want {
			t.Errorf("%T.Error() = %q\nwant %q", c.err, got, c.want)
		}
		if c.is != nil && !errors.Is(c.err, c.is) {
			t.Errorf("errors.Is(%T, %v) = false", c.err, c.is)
		}
	}
	// Sentinels are distinct, and the typed errors match only their own.
	sentinels := []error{ErrNotFound, ErrAlreadyExists, ErrInvalidTransition, ErrInvalidSpec, ErrInvalidID, ErrInvalidArgument,
		ErrSnapshotExists, ErrSnapshotNotFound, ErrSnapshotInUse, ErrSnapshotCorrupt, ErrBackend, ErrUnsupported, ErrClosed, ErrExited}
	typed := map[error]error{
		&TransitionError{}: ErrInvalidTransition, &SpecError{}: ErrInvalidSpec, &IDError{}: ErrInvalidID,
		&BackendError{}: ErrBackend, &ExitError{}: ErrExited,
	}
	for e, own := range typed {
		for _, s := range sentinels {
			if errors.Is(e, s) != (s == own) {
				t.Errorf("errors.Is(%T, %v) = %v", e, s, !(s == own))
			}
		}
	}
	for i, a := range sentinels {
		for j, b := range sentinels {
			if (i == j) != errors.Is(a, b) {
				t.Errorf("errors.Is(%v, %v) = %v", a, b, i != j)
			}
		}
	}
}

func TestAbsPaths(t *testing.T) {
	dir := t.TempDir()
	t.Chdir(dir)
	s := Spec{
		Kernel: "vmlinux", Initrd: "../boot/initrd", RootDrive: Drive{Path: "/abs/rootfs.ext4"},
		Drives: []Drive{{Path: "./data.img"}, {Path: ""}}, Vsock: &Vsock{Path: "run/v.sock"},
	}
	got, err := s.AbsPaths()
	if err != nil {
		t.Fatal(err)
	}
	want := []string{filepath.Join(dir, "vmlinux"), filepath.Join(filepath.Dir(dir), "boot/initrd"), "/abs/rootfs.ext4", filepath.Join(dir, "data.img"), "", filepath.Join(dir, "run/v.sock")}
	if g := []string{got.Kernel, got.Initrd, got.RootDrive.Path, got.Drives[0].Path, got.Drives[1].Path, got.Vsock.Path}; !slices.Equal(g, want) {
		t.Errorf("AbsPaths = %q, want %q", g, want)
	}
	if s.Kernel != "vmlinux" || s.Drives[0].Path != "./data.img" || s.Vsock.Path != "run/v.sock" {
		t.Errorf("AbsPaths changed its receiver: %+v", s)
	}
	// Absolute paths are kept verbatim (not cleaned): the spec says what
	// the caller wrote.
	if got, _ := (Spec{Kernel: "/a/../b//k"}).AbsPaths(); got.Kernel != "/a/../b//k" {
		t.Errorf("absolute kernel path changed to %q", got.Kernel)
	}
	// No working directory: each relative field is named.
	gone := filepath.Join(dir, "gone")
	if err := os.Mkdir(gone, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Chdir(gone)
	if err := os.Remove(gone); err != nil {
		t.Fatal(err)
	}
	_, err = s.AbsPaths()
	var se *SpecError
	if !errors.As(err, &se) || !errors.Is(err, ErrInvalidSpec) || len(se.Problems) != 4 || se.Problems[0].Field != "kernel" {
		t.Errorf("AbsPaths without a working directory: %v, want a SpecError naming kernel, initrd, drives[0].path, vsock.path", err)
	}
	if _, err := (Spec{Kernel: "/k", RootDrive: Drive{Path: "/r"}}).AbsPaths(); err != nil {
		t.Errorf("absolute paths need no working directory: %v", err)
	}
}

// TestBackendErrorOneSentence: firecracker's fault messages, as the real
// binaries give them (v1.7 and v1.14 end a line of the Start-without-KVM
// message with a backslash and a line break), read as one line in
// BackendError and OpError; the verbatim message stays in Message; a
// long message keeps the sentences that fit, or is cut at 240 bytes.
func TestBackendErrorOneSentence(t *testing.T) {
	for _, c := range []struct{ name, msg, want string }{
		{"v1.7 start without KVM",
			"Start microvm error: Internal error while starting microVM: Vm error: Error creating KVM object: No such file or directory (os error 2) Make sure the user launching the firecracker process is \\\nconfigured on the /dev/kvm file's ACL.",
			"Start microvm error: Internal error while starting microVM: Vm error: Error creating KVM object: No such file or directory (os error 2) Make sure the user launching the firecracker process is configured on the /dev/kvm file's ACL."},
		{"v1.14 start without KVM",
			"Start microvm error: Kvm error: Error creating KVM object: No such file or directory (os error 2) Make sure the user launching the firecracker process is \\\nconfigured on the /dev/kvm file's ACL.",
			"Start microvm error: Kvm error: Error creating KVM object: No such file or directory (os error 2) Make sure the user launching the firecracker process is configured on the /dev/kvm file's ACL."},
		{"two long sentences", "First part. " + strings.Repeat("x", 300), "First part."},
		{"the sentences that fit", "One. Two. " + strings.Repeat("y", 235) + ". Three.", "One. Two."},
		{"v1.14 TAP of lo", "Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: Invalid argument (os error 22). Invalid TUN/TAP Backend provided by lo. Check our documentation on setting up the network devices.",
			"Network config error: Could not create the network device: Open tap device failed: Error while creating ifreq structure: Invalid argument (os error 22). Invalid TUN/TAP Backend provided by lo."},
		{"one long sentence", strings.Repeat("é", 150), strings.Repeat("é", 120) + "..."},
	} {
		t.Run(c.name, func(t *testing.T) {
			be := &BackendError{Op: "boot", Method: "PUT", Path: "/actions", StatusCode: 400, Message: c.msg}
			oe := &OpError{Op: "start", ID: "vm1", Err: be, Detail: []string{"2026-12-07T00:00:00 [vm1:main] Running Firecracker v1.14.2"}}
			want := `start vm "vm1": boot: PUT /actions: status 400: ` + c.want
			if got := oe.Error(); got != want {
				t.Errorf("Error() = %q\nwant      %q", got, want)
			}
			if len(oe.Error()) >= 300+len(`start vm "vm1": boot: PUT /actions: status 400: `) || strings.ContainsAny(oe.Error(), "\n\r\\") {
				t.Errorf("not one short line: %q", oe.Error())
			}
			if be.Message != c.msg || !errors.Is(oe, ErrBackend) {
				t.Errorf("Message changed or the sentinel lost: %q", be.Message)
			}
		})
	}
}
