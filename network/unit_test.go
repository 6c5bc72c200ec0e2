//go:build linux

package network

import (
	"encoding/json"
	"net/netip"
	"slices"
	"testing"
)

func TestSlotBootArgAndMetadata(t *testing.T) {
	m := &Manager{prefix: "mvm", pool: DefaultPool, runDir: "/run/mvm/netns"}
	a := blockAddrs(m.pool, 5)
	s := m.slotOf("web-1", &leaseRecord{Name: slotName("mvm", a.HostIP), HostIP: a.HostIP.String()})
	if got, want := s.BootArg(), "ip=169.254.0.21::169.254.0.22:255.255.255.252::eth0:off"; got != want {
		t.Fatalf("BootArg %q; want %q", got, want)
	}
	if s.HostIP.String() != "10.200.0.22" || s.Name != "mvm-0ac80016" || s.NetNSPath != "/run/mvm/netns/mvm-0ac80016" ||
		s.VethHost != s.Name || s.VethNS != NSVethName || s.TAPName != TAPName || s.GuestPrefix != 30 {
		t.Fatalf("slot %+v", s)
	}
	md := s.Metadata()
	want := map[string]any{"interface": "eth0", "mac": GuestMAC, "ip": "169.254.0.21", "prefix_length": 30,
		"netmask": "255.255.255.252", "gateway": "169.254.0.22", "host_ip": "10.200.0.22"}
	for k, v := range want {
		if md[k] != v {
			t.Fatalf("Metadata[%s] = %v; want %v", k, md[k], v)
		}
	}
	if _, err := json.Marshal(md); err != nil {
		t.Fatal(err)
	}
}

func TestAddressPlanAndNames(t *testing.T) {
	pool := netip.MustParsePrefix("10.200.0.0/16")
	seen := map[netip.Addr]bool{}
	for i := range uint32(16384) {
		a := blockAddrs(pool, i)
		for _, x := range []netip.Addr{a.VethHost, a.VethNS, a.HostIP} {
			if seen[x] || !pool.Contains(x) {
				t.Fatalf("block %d: address %s reused or outside the pool", i, x)
			}
			seen[x] = true
		}
		if b := addrsOf(a.HostIP); b != a {
			t.Fatalf("addrsOf(%s) = %+v; want %+v", a.HostIP, b, a)
		}
		if idx, ok := blockIndex(pool, a.HostIP); !ok || idx != i {
			t.Fatalf("blockIndex(%s) = %d, %v", a.HostIP, idx, ok)
		}
		name := slotName("mvm", a.HostIP)
		if ip, ok := parseSlotName("mvm", name); !ok || ip != a.HostIP || len(name) > 15 {
			t.Fatalf("name %q", name)
		}
	}
	for _, bad := range []string{"mvm-0AC80002", "mvm-0ac8000", "mvm-0ac800020", "mvx-0ac80002", "mvm0ac80002", "mvm-0ac8000g"} {
		if _, ok := parseSlotName("mvm", bad); ok {
			t.Fatalf("parseSlotName accepted %q", bad)
		}
	}
	if _, ok := blockIndex(pool, netip.MustParseAddr("10.200.0.1")); ok {
		t.Fatal("a veth address taken for a HostIP")
	}
	if _, ok := blockIndex(pool, netip.MustParseAddr("10.201.0.2")); ok {
		t.Fatal("an address outside the pool taken for a HostIP")
	}
}

func TestIntervalElements(t *testing.T) {
	p := func(s ...string) []netip.Prefix {
		var out []netip.Prefix
		for _, x := range s {
			out = append(out, netip.MustParsePrefix(x))
		}
		return out
	}
	type el struct {
		key string
		end bool
	}
	render := func(ps []netip.Prefix) []el {
		var out []el
		for _, e := range intervalElements(ps) {
			out = append(out, el{netip.AddrFrom4([4]byte(e.Key)).String(), e.IntervalEnd})
		}
		return out
	}
	cases := []struct {
		in   []netip.Prefix
		want []el
	}{
		{nil, nil},
		{p("10.1.2.0/24"), []el{{"0.0.0.0", true}, {"10.1.2.0", false}, {"10.1.3.0", true}}},
		// Overlapping and adjacent prefixes merge; a host /32 inside 10/8 vanishes.
		{p("10.200.0.0/16", "10.0.0.0/8", "10.1.2.3/32", "11.0.0.0/8"), []el{{"0.0.0.0", true}, {"10.0.0.0", false}, {"12.0.0.0", true}}},
		// Starting at zero: no leading end; ending at the top: no trailing end.
		{p("0.0.0.0/8", "240.0.0.0/4", "224.0.0.0/4"), []el{{"0.0.0.0", false}, {"1.0.0.0", true}, {"224.0.0.0", false}}},
		{p("0.0.0.0/0"), []el{{"0.0.0.0", false}}},
		{p("203.0.113.7/32"), []el{{"0.0.0.0", true}, {"203.0.113.7", false}, {"203.0.113.8", true}}},
	}
	for _, tc := range cases {
		if got := render(tc.in); !slices.Equal(got, tc.want) {
			t.Fatalf("intervalElements(%v) = %v; want %v", tc.in, got, tc.want)
		}
	}
	// The default deny list is well-formed: disjoint, sorted ranges.
	rs := mergeRanges(DefaultDenied())
	for i := 1; i < len(rs); i++ {
		if rs[i].lo <= rs[i-1].hi+1 {
			t.Fatalf("ranges %v overlap or touch", rs)
		}
	}
}

func TestPolicyJSONRoundTrip(t *testing.T) {
	p := Policy{DenyAll: true, Allow: []Rule{
		{CIDR: netip.MustParsePrefix("10.1.2.0/24")},
		{CIDR: netip.MustParsePrefix("0.0.0.0/0"), Protocol: "tcp", Ports: PortRange{From: 443}},
	}}
	b, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	var q Policy
	if err := json.Unmarshal(b, &q); err != nil {
		t.Fatal(err)
	}
	if !p.equal(q) {
		t.Fatalf("round trip %s gave %+v", b, q)
	}
}
