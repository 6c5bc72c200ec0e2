package main

import (
	"net/netip"
	"strings"
	"testing"
)

func TestParseIPArg(t *testing.T) {
	good := []struct {
		in   string
		want ipConfig
	}{
		{"169.254.0.21::169.254.0.22:255.255.255.252::eth0:off", ipConfig{
			Client: netip.MustParseAddr("169.254.0.21"), Gateway: netip.MustParseAddr("169.254.0.22"), Bits: 30, Device: "eth0"}},
		{"10.0.2.15::10.0.2.2:255.255.255.0:guest:eth1:off:1.1.1.1", ipConfig{
			Client: netip.MustParseAddr("10.0.2.15"), Gateway: netip.MustParseAddr("10.0.2.2"), Bits: 24, Hostname: "guest", Device: "eth1"}},
		{"192.168.1.5", ipConfig{Client: netip.MustParseAddr("192.168.1.5"), Bits: 24}},
		{"172.16.0.2:::", ipConfig{Client: netip.MustParseAddr("172.16.0.2"), Bits: 16}},
		{"10.1.2.3:::255.255.255.255", ipConfig{Client: netip.MustParseAddr("10.1.2.3"), Bits: 32}},
	}
	for _, c := range good {
		got, ok, err := parseIPArg(c.in)
		if err != nil || !ok || got != c.want {
			t.Errorf("parseIPArg(%q) = %+v, %v, %v; want %+v", c.in, got, ok, err, c.want)
		}
	}
	for _, in := range []string{"", "off", "none", "dhcp", "on", "any", "both", "::10.0.0.1:255.0.0.0::eth0:off"} {
		if _, ok, err := parseIPArg(in); ok || err != nil {
			t.Errorf("parseIPArg(%q) = %v, %v; want nothing to configure", in, ok, err)
		}
	}
	bad := map[string]string{
		"300.1.1.1::::::":  "client-ip",
		"fe80::1":          "client-ip",
		"0.0.0.0::1.1.1.1": "not a host address",
		"224.0.0.1":        "not a host address",
		"255.255.255.255":  "not a host address",
		"10.0.0.2::10.0.0.1:255.0.255.0::eth0:off":             "contiguous",
		"10.0.0.2::10.0.0.1:0.0.0.0::eth0:off":                 "contiguous",
		"10.0.0.2::10.0.0.1:banana::eth0:off":                  "netmask",
		"10.0.0.2::192.168.0.1:255.255.255.0::eth0:":           "not in the client's network",
		"10.0.0.2::10.0.0.x:255.0.0.0::eth0:off":               "gw-ip",
		"10.0.0.2:zz:10.0.0.1:255.0.0.0::eth0:off":             "server-ip",
		"10.0.0.2::10.0.0.1:255.0.0.0::eth0/../x:":             "device",
		"10.0.0.2::10.0.0.1:255.0.0.0::averyveryverylongname:": "device",
		"10.0.0.2::10.0.0.1:255.0.0.0:bad host::":              "hostname",
		"10.0.0.2::10.0.0.1:255.0.0.0::eth0:off:x":             "dns0-ip",
		"1:2:3:4:5:6:7:8:9:10:11":                              "at most 10",
		"10.0.0.2" + strings.Repeat(":", 2000):                 "longer than",
		"10.0.0.2::\x00:255.0.0.0::eth0:off":                   "gw-ip",
	}
	for in, want := range bad {
		_, ok, err := parseIPArg(in)
		if err == nil || ok || !strings.Contains(err.Error(), want) {
			t.Errorf("parseIPArg(%q) = %v, %v; want an error containing %q", trunc(in), ok, err, want)
		}
	}
}

func FuzzParseIPArg(f *testing.F) {
	f.Add("169.254.0.21::169.254.0.22:255.255.255.252::eth0:off")
	f.Add("10.0.0.1:::")
	f.Fuzz(func(t *testing.T, in string) {
		cfg, ok, err := parseIPArg(in)
		if err != nil && ok {
			t.Fatalf("ok with an error: %v", err)
		}
		if ok && (!cfg.Client.Is4() || cfg.Bits < 1 || cfg.Bits > 32 || len(cfg.Device) > 15) {
			t.Fatalf("accepted a bad config %+v from %q", cfg, in)
		}
	})
}

func TestKernelArg(t *testing.T) {
	cmd := "console=ttyS0 ip=1.2.3.4:::: root=/dev/vda ip=10.0.0.2::10.0.0.1:255.0.0.0::eth0:off quiet"
	if v, ok := kernelArg(cmd, "ip"); !ok || v != "10.0.0.2::10.0.0.1:255.0.0.0::eth0:off" {
		t.Errorf("kernelArg ip = %q, %v; want the last one", v, ok)
	}
	if _, ok := kernelArg(cmd, "nope"); ok {
		t.Error("kernelArg found an absent argument")
	}
	if _, ok := kernelArg("vip=1.2.3.4", "ip"); ok {
		t.Error("kernelArg matched a suffix")
	}
}
