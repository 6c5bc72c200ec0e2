// Command mvm-agent is the project's guest program: it runs inside a
// microVM, as PID 1 of a minimal image (see package image) or as a service
// under another init, and serves the protocol of package agent on vsock
// port agent.DefaultPort and on the serial console.
//
// As PID 1 it mounts /proc, /sys, /dev (devtmpfs), /dev/pts, /tmp and /run,
// reaps orphaned processes, brings lo and the interface of the kernel's
// ip= argument up (address and default route, when the kernel has not done
// it already, plus a route to the metadata service 169.254.169.254 on that
// interface), and asks the kernel for SIGINT on Ctrl-Alt-Del
// (reboot(LINUX_REBOOT_CMD_CAD_OFF)). On SIGINT or SIGTERM, or a poweroff
// request, it prints "mvm-agent: shutting down (<why>)", stops every other
// process, syncs, unmounts what it mounted, remounts / read-only, and
// resets the machine (reboot(LINUX_REBOOT_CMD_RESTART)): Firecracker on
// x86 has no power management and exits when the guest resets through the
// i8042 controller (boot argument reboot=k), while a power-off would leave
// it running; QEMU exits on reset with -no-reboot.
//
// When it serves requests it prints "mvm-agent: ready <version>" on the
// console (agent.ReadyMarker).
//
// Usage:
//
//	mvm-agent [-port N] [-http-port N] [-secrets-dir DIR] [-console PATH] [-version]
//
// -port serves the line protocol (control and health, also on the
// console); -http-port (default agent.HTTPPort) serves the HTTP API of
// package agent: exec, files, environment and secrets (kept in
// -secrets-dir, default /run/mvm/secrets, on tmpfs).
//
// -console defaults to /dev/console as PID 1 and to none otherwise ("" or
// "none" disables the console server).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"runtime/debug"

	"github.com/mvm-dev/microvm/agent"
)

// version is the agent's version; the build may set it with
// -ldflags "-X main.version=...". Otherwise it is the module version or
// VCS revision from the build info.
var version = ""

func agentVersion() string {
	if version != "" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	if v := bi.Main.Version; v != "" && v != "(devel)" {
		return v
	}
	rev, dirty := "", false
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			rev = s.Value
		case "vcs.modified":
			dirty = s.Value == "true"
		}
	}
	if rev == "" {
		return "devel"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "-dirty"
	}
	return "devel-" + rev
}

func main() {
	log.SetFlags(0)
	log.SetPrefix("mvm-agent: ")
	fs := flag.NewFlagSet("mvm-agent", flag.ContinueOnError)
	port := fs.Uint("port", 1024, "vsock port to serve on (0: no vsock)")
	httpPort := fs.Uint("http-port", agent.HTTPPort, "vsock port of the HTTP API: exec, files, env, secrets (0: none)")
	secretsDir := fs.String("secrets-dir", agent.DefaultSecretsDir, "directory of secrets (must be on tmpfs)")
	console := fs.String("console", "", `console device to serve on ("none": no console; default /dev/console as PID 1)`)
	showVersion := fs.Bool("version", false, "print the version and exit")
	fs.SetOutput(io.Discard)
	// As PID 1, the kernel passes unknown boot arguments as arguments:
	// ignore what is not ours rather than refuse to boot.
	args := os.Args[1:]
	if os.Getpid() == 1 {
		args = ownFlags(args)
	}
	if err := fs.Parse(args); err != nil {
		fmt.Fprintf(os.Stderr, "mvm-agent: %v\nusage: mvm-agent [-port N] [-http-port N] [-secrets-dir DIR] [-console PATH] [-version]\n", err)
		os.Exit(2)
	}
	if *showVersion {
		fmt.Println(agentVersion())
		return
	}
	if *port > 1<<32-1 || *httpPort > 1<<32-1 {
		fmt.Fprintln(os.Stderr, "mvm-agent: -port and -http-port must fit in 32 bits")
		os.Exit(2)
	}
	cfg := config{port: uint32(*port), httpPort: uint32(*httpPort), secretsDir: *secretsDir, console: *console, version: agentVersion()}
	if err := run(context.Background(), cfg); err != nil {
		log.Printf("%v", err)
		os.Exit(1)
	}
}

// ownFlags keeps the arguments that are this program's flags.
func ownFlags(args []string) []string {
	var out []string
	for i := 0; i < len(args); i++ {
		a := args[i]
		switch a {
		case "-port", "--port", "-console", "--console", "-http-port", "--http-port", "-secrets-dir", "--secrets-dir":
			if i+1 < len(args) {
				out = append(out, a, args[i+1])
				i++
			}
		case "-version", "--version":
			out = append(out, a)
		default:
			for _, p := range []string{"-port=", "--port=", "-console=", "--console=", "-http-port=", "--http-port=", "-secrets-dir=", "--secrets-dir="} {
				if len(a) > len(p) && a[:len(p)] == p {
					out = append(out, a)
				}
			}
		}
	}
	return out
}

// config is what run needs.
type config struct {
	port       uint32
	httpPort   uint32
	secretsDir string
	console    string
	version    string
}
