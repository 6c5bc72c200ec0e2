package main

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// defaultDevice is the interface configured when ip= names none.
const defaultDevice = "eth0"

// configureNetwork brings lo up and applies the static configuration of the
// kernel's ip= argument in cmdline: the device up, its address, and a
// default route through the gateway. Each step is skipped when the kernel
// (CONFIG_IP_PNP) has already done it. It returns what it configured, for
// the console.
func configureNetwork(cmdline string) (string, error) {
	h, err := netlink.NewHandle()
	if err != nil {
		return "", fmt.Errorf("netlink: %w", err)
	}
	defer h.Close()
	lo, err := h.LinkByName("lo")
	if err != nil {
		return "", fmt.Errorf("find lo: %w", err)
	}
	if err := h.LinkSetUp(lo); err != nil {
		return "", fmt.Errorf("set lo up: %w", err)
	}
	arg, found := kernelArg(cmdline, "ip")
	if !found {
		return "lo up; no ip= argument", nil
	}
	cfg, ok, err := parseIPArg(arg)
	if err != nil {
		return "", err
	}
	if !ok {
		return "lo up; ip=" + trunc(arg) + " asks for no static configuration", nil
	}
	dev := cfg.Device
	if dev == "" {
		dev = defaultDevice
	}
	link, err := h.LinkByName(dev)
	if err != nil {
		return "", fmt.Errorf("find %s (ip= device): %w", dev, err)
	}
	if err := h.LinkSetUp(link); err != nil {
		return "", fmt.Errorf("set %s up: %w", dev, err)
	}
	want := cfg.Prefix()
	addrs, err := h.AddrList(link, unix.AF_INET)
	if err != nil {
		return "", fmt.Errorf("list addresses of %s: %w", dev, err)
	}
	have := false
	for _, a := range addrs {
		ones, _ := a.Mask.Size()
		if a.IP.Equal(net.IP(want.Addr().AsSlice())) && ones == want.Bits() {
			have = true
		}
	}
	if !have {
		ip := &net.IPNet{IP: net.IP(want.Addr().AsSlice()), Mask: net.CIDRMask(want.Bits(), 32)}
		if err := h.AddrAdd(link, &netlink.Addr{IPNet: ip}); err != nil && !errors.Is(err, unix.EEXIST) {
			return "", fmt.Errorf("add %s to %s: %w", want, dev, err)
		}
	}
	msg := fmt.Sprintf("%s up with %s", dev, want)
	if !cfg.Gateway.IsValid() {
		return msg, nil
	}
	routes, err := h.RouteList(link, unix.AF_INET)
	if err != nil {
		return "", fmt.Errorf("list routes of %s: %w", dev, err)
	}
	for _, r := range routes {
		if isDefault(r.Dst) {
			return msg + ", default via " + r.Gw.String(), nil
		}
	}
	gw := net.IP(cfg.Gateway.AsSlice())
	if err := h.RouteAdd(&netlink.Route{LinkIndex: link.Attrs().Index, Gw: gw}); err != nil && !errors.Is(err, unix.EEXIST) {
		return "", fmt.Errorf("add default route via %s on %s: %w", gw, dev, err)
	}
	return msg + ", default via " + gw.String(), nil
}

// isDefault reports whether dst is the IPv4 default destination.
func isDefault(dst *net.IPNet) bool {
	if dst == nil {
		return true
	}
	ones, _ := dst.Mask.Size()
	return ones == 0 && dst.IP.IsUnspecified()
}
