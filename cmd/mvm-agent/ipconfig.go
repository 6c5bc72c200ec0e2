package main

import (
	"fmt"
	"net/netip"
	"strings"
)

// ipConfig is a static configuration from the kernel's ip= argument
// (Documentation/admin-guide/nfs/nfsroot.rst):
//
//	ip=<client-ip>:<server-ip>:<gw-ip>:<netmask>:<hostname>:<device>:<autoconf>:<dns0-ip>:<dns1-ip>:<ntp0-ip>
//
// Only the fields the agent acts on are kept. package network writes
// "ip=<guest>::<gateway>:<netmask>::eth0:off".
type ipConfig struct {
	Client   netip.Addr // the guest's address
	Gateway  netip.Addr // zero when none
	Bits     int        // prefix length from the netmask
	Hostname string
	Device   string // "" means the kernel's choice; the agent uses eth0
}

// Prefix is the guest's address with its prefix length.
func (c ipConfig) Prefix() netip.Prefix { return netip.PrefixFrom(c.Client, c.Bits) }

// maxIPArg bounds the ip= value: ten fields of at most a host name each.
const maxIPArg = 1024

// parseIPArg parses the value of ip=. It returns ok=false without error
// for the forms that configure nothing statically ("off", "none", "dhcp",
// ... or an empty client address) and an error naming the field for a
// malformed value.
func parseIPArg(v string) (cfg ipConfig, ok bool, err error) {
	if len(v) > maxIPArg {
		return ipConfig{}, false, fmt.Errorf("ip=: longer than %d bytes", maxIPArg)
	}
	switch v {
	case "", "off", "none", "on", "any", "dhcp", "bootp", "rarp", "both":
		return ipConfig{}, false, nil
	}
	f := strings.Split(v, ":")
	if len(f) > 10 {
		return ipConfig{}, false, fmt.Errorf("ip=: %d fields, at most 10", len(f))
	}
	field := func(i int) string {
		if i < len(f) {
			return f[i]
		}
		return ""
	}
	if field(0) == "" {
		return ipConfig{}, false, nil // the kernel autoconfigures (DHCP etc.)
	}
	addr := func(name, s string) (netip.Addr, error) {
		if s == "" {
			return netip.Addr{}, nil
		}
		a, err := netip.ParseAddr(s)
		if err != nil || !a.Is4() {
			return netip.Addr{}, fmt.Errorf("ip=: %s %q is not an IPv4 address", name, trunc(s))
		}
		return a, nil
	}
	if cfg.Client, err = addr("client-ip", field(0)); err != nil {
		return ipConfig{}, false, err
	}
	if !cfg.Client.IsValid() || cfg.Client.IsUnspecified() || cfg.Client.IsMulticast() || cfg.Client == netip.AddrFrom4([4]byte{255, 255, 255, 255}) {
		return ipConfig{}, false, fmt.Errorf("ip=: client-ip %s is not a host address", cfg.Client)
	}
	if _, err = addr("server-ip", field(1)); err != nil {
		return ipConfig{}, false, err
	}
	if cfg.Gateway, err = addr("gw-ip", field(2)); err != nil {
		return ipConfig{}, false, err
	}
	cfg.Bits, err = maskBits(field(3), cfg.Client)
	if err != nil {
		return ipConfig{}, false, err
	}
	if cfg.Gateway.IsValid() && !cfg.Prefix().Masked().Contains(cfg.Gateway) {
		return ipConfig{}, false, fmt.Errorf("ip=: gw-ip %s is not in the client's network %s", cfg.Gateway, cfg.Prefix().Masked())
	}
	cfg.Hostname = field(4)
	if len(cfg.Hostname) > 64 || strings.ContainsFunc(cfg.Hostname, func(r rune) bool { return r <= ' ' || r > '~' }) {
		return ipConfig{}, false, fmt.Errorf("ip=: hostname %q is not a host name", trunc(cfg.Hostname))
	}
	cfg.Device = field(5)
	if len(cfg.Device) > 15 || strings.ContainsFunc(cfg.Device, func(r rune) bool { return r <= ' ' || r == '/' || r > '~' }) {
		return ipConfig{}, false, fmt.Errorf("ip=: device %q is not an interface name", trunc(cfg.Device))
	}
	for i, name := range []string{"dns0-ip", "dns1-ip", "ntp0-ip"} {
		if _, err := addr(name, field(7+i)); err != nil {
			return ipConfig{}, false, err
		}
	}
	return cfg, true, nil
}

// maskBits returns the prefix length of a dotted netmask; an empty mask
// means the class default of the kernel (here: /8, /16 or /24 by the
// address's first octet).
func maskBits(s string, client netip.Addr) (int, error) {
	if s == "" {
		switch b := client.As4()[0]; {
		case b < 128:
			return 8, nil
		case b < 192:
			return 16, nil
		default:
			return 24, nil
		}
	}
	m, err := netip.ParseAddr(s)
	if err != nil || !m.Is4() {
		return 0, fmt.Errorf("ip=: netmask %q is not a dotted IPv4 netmask", trunc(s))
	}
	b := m.As4()
	v := uint32(b[0])<<24 | uint32(b[1])<<16 | uint32(b[2])<<8 | uint32(b[3])
	bits := 0
	for v&0x80000000 != 0 {
		bits++
		v <<= 1
	}
	if v != 0 || bits == 0 {
		return 0, fmt.Errorf("ip=: netmask %s is not a contiguous mask of 1 to 32 bits", s)
	}
	return bits, nil
}

// kernelArg returns the value of the last name= argument of a kernel
// command line ("" when absent).
func kernelArg(cmdline, name string) (string, bool) {
	val, found := "", false
	for _, a := range strings.Fields(cmdline) {
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			val, found = v, true
		}
	}
	return val, found
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "..."
	}
	return s
}
