package server

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
)

func TestHappyPathBoot(t *testing.T) {
	p := startFC(t, startOpt{})
	if b := p.ok("GET", "/", ""); !strings.Contains(b, `"state":"Not started"`) || !strings.Contains(b, `"app_name":"Firecracker"`) || !strings.Contains(b, `"id":"vm-1"`) {
		t.Fatalf("GET / = %s", b)
	}
	if b := p.ok("GET", "/machine-config", ""); !strings.Contains(b, `"vcpu_count":1`) || !strings.Contains(b, `"mem_size_mib":128`) {
		t.Fatalf("default machine config = %s", b)
	}
	logPath := file(t, p.dir, "fc.log", "")
	metricsPath := file(t, p.dir, "fc.metrics", "")
	p.ok("PUT", "/logger", `{"log_path":`+jsonStr(logPath)+`,"level":"debug","show_level":true}`)
	p.ok("PUT", "/metrics", `{"metrics_path":`+jsonStr(metricsPath)+`,"emit_id":true}`)
	p.ok("PUT", "/machine-config", `{"vcpu_count":2,"mem_size_mib":256,"smt":false}`)
	vs := filepath.Join(p.dir, "v.sock")
	p.ok("PUT", "/vsock", `{"guest_cid":3,"uds_path":`+jsonStr(vs)+`}`)
	p.ok("PUT", "/mmds", `{"latest":{"meta-data":{"id":"x"}}}`)
	p.ok("PATCH", "/mmds", `{"latest":{"meta-data":{"id":null,"k":"v"}}}`)
	if b := p.ok("GET", "/mmds", ""); b != `{"latest":{"meta-data":{"k":"v"}}}` {
		t.Fatalf("GET /mmds = %s", b)
	}
	bootMinimal(t, p)
	if b := p.ok("GET", "/", ""); !strings.Contains(b, `"state":"Running"`) {
		t.Fatalf("GET / after start = %s", b)
	}
	var cfg map[string]any
	if err := json.Unmarshal([]byte(p.ok("GET", "/vm/config", "")), &cfg); err != nil {
		t.Fatal(err)
	}
	if mc := cfg["machine-config"].(map[string]any); mc["vcpu_count"].(float64) != 2 || mc["mem_size_mib"].(float64) != 256 {
		t.Fatalf("vm/config machine-config = %v", mc)
	}
	if d := cfg["drives"].([]any); len(d) != 1 || d[0].(map[string]any)["cache_type"] != "Unsafe" {
		t.Fatalf("vm/config drives = %v", d)
	}
	waitFor(t, "login prompt", func() bool { return strings.Contains(p.stdout.String(), "vm-1 login:") })
	if !strings.Contains(p.stdout.String(), "Linux version") {
		t.Fatalf("stdout = %s", p.stdout)
	}

	p.ok("PUT", "/actions", `{"action_type":"FlushMetrics"}`)
	mb, _ := os.ReadFile(metricsPath)
	var line map[string]any
	if err := json.Unmarshal(mb, &line); err != nil {
		t.Fatalf("metrics line %q: %v", mb, err)
	}
	if !strings.HasPrefix(string(mb), `{"utc_timestamp_ms":`) || line["id"] != "vm-1" {
		t.Fatalf("metrics line = %s", mb)
	}
	put := line["put_api_requests"].(map[string]any)
	if put["actions_count"].(float64) < 1 || put["drive_count"].(float64) != 1 {
		t.Fatalf("put_api_requests = %v", put)
	}
	if _, ok := line["block_rootfs"]; !ok {
		t.Fatalf("no block_rootfs group: %s", mb)
	}
	lb, _ := os.ReadFile(logPath)
	if !strings.Contains(string(lb), `[vm-1:fc_api:INFO] The API server received a Put request on "/actions"`) {
		t.Fatalf("log = %s", lb)
	}

	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	p.ok("PATCH", "/vm", `{"state":"Paused"}`) // idempotent
	if b := p.ok("GET", "/", ""); !strings.Contains(b, `"state":"Paused"`) {
		t.Fatalf("GET / paused = %s", b)
	}
	p.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	p.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	st := p.wait(10 * time.Second)
	if st.ExitCode() != 0 {
		t.Fatalf("exit after SendCtrlAltDel: %v stderr %s", st, p.stderr)
	}
	if !strings.Contains(p.stdout.String(), "reboot: Restarting system") {
		t.Fatalf("no shutdown line: %s", p.stdout)
	}
	if _, err := os.Stat(p.sock); err != nil {
		t.Fatalf("Firecracker leaves its socket behind: %v", err)
	}
}

func TestConsoleFollowsBootArgs(t *testing.T) {
	p := startFC(t, startOpt{})
	k := file(t, p.dir, "vmlinux", "k")
	p.ok("PUT", "/boot-source", `{"kernel_image_path":`+jsonStr(k)+`}`) // default args: 8250.nr_uarts=0
	p.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	p.ok("GET", "/", "")
	time.Sleep(20 * time.Millisecond)
	if strings.Contains(p.stdout.String(), "login:") {
		t.Fatalf("console printed with 8250.nr_uarts=0: %s", p.stdout)
	}
}

func TestStrictRequests(t *testing.T) {
	p := startFC(t, startOpt{})
	dir := p.dir
	k := file(t, dir, "vmlinux", "k")
	r := file(t, dir, "rootfs", "r")
	cases := []struct{ method, path, body, want string }{
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"foo":1}`, "unknown field `foo`"},
		{"PUT", "/machine-config", `{"vcpu_count":1}`, "missing field `mem_size_mib`"},
		{"PUT", "/machine-config", `{"vcpu_count":0,"mem_size_mib":128}`, fcstandin.MsgVcpuCount},
		{"PUT", "/machine-config", `{"vcpu_count":33,"mem_size_mib":128}`, fcstandin.MsgVcpuCount},
		{"PUT", "/machine-config", `{"vcpu_count":3,"mem_size_mib":128,"smt":true}`, fcstandin.MsgVcpuCount},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":129,"huge_pages":"2M"}`, fcstandin.MsgMemSize},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":-1}`, "invalid value"},
		{"PUT", "/machine-config", `{"vcpu_count":"1","mem_size_mib":128}`, "invalid type"},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128`, "An error occurred when deserializing the json body of a request:"},
		{"PATCH", "/machine-config", `{}`, fcstandin.MsgEmptyPatch},
		{"PATCH", "/machine-config", `{"bogus":true}`, "unknown field `bogus`"},
		{"PUT", "/boot-source", `{"kernel_image_path":"/nonexistent/vmlinux"}`, "Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"},
		{"PUT", "/boot-source", `{"kernel_image_path":` + jsonStr(k) + `,"extra":1}`, "unknown field `extra`"},
		{"PUT", "/actions", `{"action_type":"Reboot"}`, "unknown variant `Reboot`"},
		{"PUT", "/actions", `{"action_type":"InstanceStart","x":1}`, "unknown field `x`"},
		{"PUT", "/actions", "", fcstandin.MsgEmptyPut},
		{"PUT", "/nope", `{}`, "Invalid request method and/or path: PUT nope."},
		{"GET", "/nope", "", "Invalid request method and/or path: GET nope."},
		{"PATCH", "/actions", `{"a":1}`, "Invalid request method and/or path: PATCH actions."},
		{"GET", "/machine-config", `{"x":1}`, fcstandin.MsgGetBody},
		{"PATCH", "/vm", "", fcstandin.MsgEmptyPatch},
		{"PUT", "/drives/bad-id", `{"drive_id":"bad-id","path_on_host":"x","is_root_device":true,"is_read_only":true}`, fcstandin.MsgInvalidID},
		{"PUT", "/drives", `{"drive_id":"a"}`, fcstandin.MsgEmptyID},
		{"PUT", "/drives/a", `{"drive_id":"b","path_on_host":` + jsonStr(r) + `,"is_root_device":true,"is_read_only":true}`, fcstandin.MsgIDMismatch},
		{"PUT", "/drives/a", `{"drive_id":"a","path_on_host":"/nonexistent","is_root_device":true,"is_read_only":true}`, "No such file or directory (os error 2)"},
		{"PUT", "/drives/a", `{"drive_id":"a","path_on_host":` + jsonStr(dir) + `,"is_root_device":true,"is_read_only":true}`, "Drive config error"},
		{"PUT", "/drives/a", `{"drive_id":"a","path_on_host":` + jsonStr(r) + `,"is_root_device":true}`, "is_read_only"},
		{"PUT", "/drives/a", `{"drive_id":"a","path_on_host":` + jsonStr(r) + `,"is_root_device":true,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":1,"refill_time":1},"extra":1}}`, "unknown field `extra`"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth1","host_dev_name":"tap0"}`, "The id from the path [eth0] does not match the id from the body [eth1]!"},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"zz"}`, "invalid MAC address"},
		{"PUT", "/mmds/config", `{"network_interfaces":["eth9"]}`, "does not correspond to any existing network interface"},
		{"PUT", "/mmds/config", `{"network_interfaces":[]}`, "is empty"},
		{"PATCH", "/vm", `{"state":"Paused"}`, fcstandin.MsgPreBoot},
		{"PUT", "/actions", `{"action_type":"FlushMetrics"}`, fcstandin.MsgPreBoot},
		{"PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`, fcstandin.MsgPreBoot},
		{"PATCH", "/balloon", `{"amount_mib":1}`, fcstandin.MsgPreBoot},
		{"PATCH", "/balloon", `{"amount_mib":1,"stats_polling_interval_s":1}`, "unknown field `stats_polling_interval_s`"},
		{"PATCH", "/drives/a", `{"drive_id":"a"}`, fcstandin.MsgPreBoot},
		{"PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m"}`, fcstandin.MsgPreBoot},
		{"PUT", "/snapshot", `{"snapshot_path":"s"}`, "Missing snapshot operation type."},
		{"PUT", "/snapshot/load", `{"snapshot_path":"s"}`, "missing field: either `mem_backend` or `mem_file_path` is required"},
		{"PUT", "/snapshot/load", `{"snapshot_path":"s","mem_file_path":"m","mem_backend":{"backend_type":"File","backend_path":"m"}}`, "too many fields"},
		{"PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m","x":1}}`, "unknown field `x`"},
		{"GET", "/balloon", "", "Balloon config error"},
		{"PATCH", "/mmds", `{"a":1}`, fcstandin.MsgMmdsNotInit},
		{"PUT", "/vsock", `{"guest_cid":2,"uds_path":"x"}`, "invalid value"},
		{"PUT", "/logger", `{"level":"loud"}`, "Invalid LevelFilter"},
		{"PUT", "/logger", `{"log_path":"/nonexistent/log"}`, "Logger error: Failed to open target file"},
		{"PUT", "/cpu-config", `{"vcpu_features":[]}`, "unknown field `vcpu_features`"},
	}
	for _, c := range cases {
		p.fails(c.method, c.path, c.body, c.want)
	}
	// Lenient bodies: Metrics, TokenBucket and NetworkOverride accept unknown fields.
	m := file(t, dir, "m", "")
	p.ok("PUT", "/metrics", `{"metrics_path":`+jsonStr(m)+`,"future_field":1}`)
	p.fails("PUT", "/metrics", `{"metrics_path":`+jsonStr(m)+`}`, fcstandin.MsgMetricsTwice)
	p.ok("PUT", "/logger", `{"level":"WARNING"}`)
	p.fails("PUT", "/logger", `{"level":"Info"}`, fcstandin.MsgLoggerTwice)
	p.ok("PUT", "/drives/a", `{"drive_id":"a","path_on_host":`+jsonStr(r)+`,"is_root_device":true,"is_read_only":true,"rate_limiter":{"bandwidth":{"size":1,"refill_time":1,"future":2}}}`)
	p.fails("PUT", "/drives/b", `{"drive_id":"b","path_on_host":`+jsonStr(r)+`,"is_root_device":true,"is_read_only":true}`, "A root block device already exists!")
	// A boot-path resource was configured: snapshot load is refused (and the process lives on).
	p.fails("PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"}}`, fcstandin.MsgLoadNotAllowed)
	// vsock binds at PUT and fails when the path exists.
	taken := file(t, dir, "taken.sock", "")
	p.fails("PUT", "/vsock", `{"guest_cid":3,"uds_path":`+jsonStr(taken)+`}`, "Address in use (os error 98)")
	// Deprecated fields succeed with a Deprecation header.
	code, _, h := p.do("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2"}`)
	if code != 204 || h.Get("Deprecation") != "true" {
		t.Fatalf("cpu_template: %d %v", code, h)
	}
	p.ok("PUT", "/boot-source", `{"kernel_image_path":`+jsonStr(k)+`}`)
	p.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	post := []struct{ method, path, body string }{
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"PATCH", "/machine-config", `{"vcpu_count":1}`},
		{"PUT", "/boot-source", `{"kernel_image_path":` + jsonStr(k) + `}`},
		{"PUT", "/drives/c", `{"drive_id":"c","path_on_host":` + jsonStr(r) + `,"is_root_device":false,"is_read_only":true}`},
		{"PUT", "/logger", `{"level":"Info"}`},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"x"}`},
		{"PUT", "/balloon", `{"amount_mib":1,"deflate_on_oom":true}`},
		{"PUT", "/entropy", `{}`},
		{"PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{"PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"}}`},
	}
	for _, c := range post {
		p.fails(c.method, c.path, c.body, fcstandin.MsgPostBoot)
	}
	p.fails("PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m"}`, "not paused")
	p.ok("PATCH", "/drives/a", `{"drive_id":"a","rate_limiter":{"ops":{"size":10,"refill_time":100}}}`)
	p.fails("PATCH", "/drives/zz", `{"drive_id":"zz"}`, "Device not found")
}

// rawExchange writes req on a fresh connection and returns the response
// status line, headers and body as text.
func rawExchange(t *testing.T, sock, req string) string {
	t.Helper()
	got, err := tryExchange(sock, req)
	if err != nil {
		t.Fatal(err)
	}
	return got
}

// tryExchange is rawExchange returning its error.
func tryExchange(sock, req string) (string, error) {
	c, err := net.Dial("unix", sock)
	if err != nil {
		return "", err
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		return "", err
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.Status + "\n" + fmt.Sprint(resp.Header) + "\n" + string(b), nil
}

func TestChunkedBody(t *testing.T) {
	body := `{"action_type":"InstanceStart"}`
	req := fmt.Sprintf("PUT /actions HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n", len(body), body)
	t.Run("latest", func(t *testing.T) {
		p := startFC(t, startOpt{})
		got := rawExchange(t, p.sock, req)
		if !strings.Contains(got, "400 Bad Request") || !strings.Contains(got, `{"fault_message":"Empty PUT request."}`) {
			t.Fatalf("chunked PUT on latest: %q", got)
		}
	})
	t.Run("v1.0", func(t *testing.T) {
		p := startFC(t, startOpt{env: []string{"FCSTANDIN_API=v1.0"}})
		got := rawExchange(t, p.sock, req)
		if !strings.Contains(got, "400 Bad Request") || strings.Contains(got, "fault_message") || !strings.Contains(got, `"error"`) {
			t.Fatalf("chunked PUT on v1.0: %q", got)
		}
	})
}

func TestPayloadLimitAndConnections(t *testing.T) {
	p := startFC(t, startOpt{})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	p.client.CloseIdleConnections()
	for i := 0; i < maxConnections; i++ {
		c, err := net.Dial("unix", p.sock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// Make sure the server has accepted it.
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		br := bufio.NewReader(c)
		if line, err := br.ReadString('\n'); err != nil || !strings.Contains(line, "200") {
			t.Fatalf("conn %d: %q %v", i, line, err)
		}
	}
	c, err := net.Dial("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	all, _ := io.ReadAll(c)
	if !strings.HasPrefix(string(all), "HTTP/1.1 503") || !strings.Contains(string(all), "Too many open connections") {
		t.Fatalf("11th connection got %q", all)
	}
	conns[0].Close()
	conns = conns[1:]
	waitFor(t, "a free connection slot", func() bool {
		c, err := net.Dial("unix", p.sock)
		if err != nil {
			return false
		}
		defer c.Close()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
		c.SetReadDeadline(time.Now().Add(time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.Contains(line, "200")
	})
	for _, c := range conns {
		c.Close()
	}
	conns = nil
	big := `{"x":"` + strings.Repeat("a", DefaultMaxPayload) + `"}`
	// The server frees the slots of the closed connections when it sees
	// them close: until then a new connection may still get the 503.
	var got string
	waitFor(t, "the answer to a big payload", func() bool {
		var err error
		got, err = tryExchange(p.sock, fmt.Sprintf("PUT /mmds HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s", len(big), big))
		return err == nil && !strings.HasPrefix(got, "503")
	})
	if !strings.Contains(got, "400") || !strings.Contains(got, "is larger than the limit of 51200") {
		t.Fatalf("big payload: %q", got)
	}
}

func TestCommandLine(t *testing.T) {
	bin := fcstandin.Build(t)
	spec := fcstandin.SpecDir(t)
	run := func(env []string, args ...string) (int, string, string) {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(append(os.Environ(), "FCSTANDIN_SPEC_DIR="+spec), env...)
		var out, errb syncBuf
		cmd.Stdout, cmd.Stderr = &out, &errb
		cmd.Run()
		return cmd.ProcessState.ExitCode(), out.String(), errb.String()
	}
	if code, out, _ := run(nil, "--version"); code != 0 || !strings.HasPrefix(out, "Firecracker v1.17.0-dev") {
		t.Fatalf("--version: %d %q", code, out)
	}
	if code, out, _ := run([]string{"FCSTANDIN_API=v1.0"}, "--version"); code != 0 || !strings.HasPrefix(out, "Firecracker v1.0.0") {
		t.Fatalf("--version v1.0: %d %q", code, out)
	}
	dir := shortDir(t)
	sock := filepath.Join(dir, "s")
	for _, bad := range [][]string{
		{"--api-sock", sock, "--id", "bad_id"},
		{"--api-sock", sock, "--id", strings.Repeat("a", 65)},
		{"--api-sock", sock, "--frobnicate"},
		{"--api-sock"},
		{"--api-sock", sock, "--config-file", "x"},
	} {
		if code, _, errs := run(nil, bad...); code != 1 || errs == "" {
			t.Fatalf("%v: exit %d stderr %q", bad, code, errs)
		}
	}
	if code, _, errs := run([]string{"FCSTANDIN_API=v9"}, "--api-sock", sock); code != 1 || !strings.Contains(errs, "FCSTANDIN_API") {
		t.Fatalf("bad FCSTANDIN_API: %d %q", code, errs)
	}
	if code, _, errs := run([]string{"FCSTANDIN_SPEC_DIR=" + dir}, "--api-sock", sock); code != 1 || !strings.Contains(errs, "spec") {
		t.Fatalf("missing spec: %d %q", code, errs)
	}
	file(t, dir, "s", "")
	code, _, errs := run(nil, "--api-sock", sock, "--no-seccomp", "--level", "Debug", "--enable-pci")
	if code != 1 || !strings.Contains(errs, "Failed to open the API socket at: "+sock+". Check that it is not already used.") {
		t.Fatalf("existing socket: %d %q", code, errs)
	}
}

func TestSignalsAndStartDelay(t *testing.T) {
	p := startFC(t, startOpt{env: []string{"FCSTANDIN_START_DELAY=30ms"}, args: []string{"--no-seccomp", "--boot-timer"}})
	p.ok("GET", "/machine-config", "")
	p.cmd.Process.Signal(syscall.SIGTERM)
	st := p.wait(10 * time.Second)
	if sig, ok := signaled(st); !ok || sig != syscall.SIGTERM {
		t.Fatalf("SIGTERM: %v", st)
	}
}

func TestCrashOnDemand(t *testing.T) {
	t.Run("InstanceStart", func(t *testing.T) {
		p := startFC(t, startOpt{env: []string{"FCSTANDIN_CRASH=InstanceStart"}})
		k := file(t, p.dir, "k", "k")
		p.ok("PUT", "/boot-source", `{"kernel_image_path":`+jsonStr(k)+`}`)
		req, _ := newReq("PUT", "/actions", `{"action_type":"InstanceStart"}`)
		if resp, err := p.client.Do(req); err == nil {
			resp.Body.Close()
			t.Fatalf("request survived the crash: %d", resp.StatusCode)
		}
		st := p.wait(10 * time.Second)
		if sig, ok := signaled(st); !ok || sig != syscall.SIGABRT {
			t.Fatalf("crash status: %v", st)
		}
		if !strings.Contains(p.stderr.String(), "panicked") {
			t.Fatalf("stderr: %s", p.stderr)
		}
	})
	t.Run("path", func(t *testing.T) {
		p := startFC(t, startOpt{env: []string{"FCSTANDIN_CRASH=PUT /snapshot/create"}})
		bootMinimal(t, p)
		p.ok("PATCH", "/vm", `{"state":"Paused"}`)
		req, _ := newReq("PUT", "/snapshot/create", `{"snapshot_path":"s","mem_file_path":"m"}`)
		if resp, err := p.client.Do(req); err == nil {
			resp.Body.Close()
			t.Fatal("request survived the crash")
		}
		if sig, ok := signaled(p.wait(10 * time.Second)); !ok || sig != syscall.SIGABRT {
			t.Fatal("not killed by SIGABRT")
		}
	})
	t.Run("after-start", func(t *testing.T) {
		p := startFC(t, startOpt{env: []string{"FCSTANDIN_CRASH=after-start:20ms"}})
		bootMinimal(t, p)
		st := p.wait(10 * time.Second)
		if sig, ok := signaled(st); !ok || sig != syscall.SIGSEGV {
			t.Fatalf("after-start: %v", st)
		}
	})
}

// TestExitOnDemand: FCSTANDIN_EXIT ends the process by itself after the
// start, with status 0 (the guest reset itself, also when it was paused
// at the time and resumed later) or the status asked for.
func TestExitOnDemand(t *testing.T) {
	t.Run("reset", func(t *testing.T) {
		p := startFC(t, startOpt{env: []string{"FCSTANDIN_EXIT=after-start:20ms"}})
		bootMinimal(t, p)
		st := p.wait(10 * time.Second)
		if !st.Exited() || st.ExitCode() != 0 {
			t.Fatalf("exit: %v, stderr %s", st, p.stderr)
		}
		if !strings.Contains(p.stdout.String(), "reboot: Restarting system") {
			t.Fatalf("no reset line on the console: %s", p.stdout)
		}
	})
	t.Run("reset-deferred-while-paused", func(t *testing.T) {
		p := startFC(t, startOpt{env: []string{"FCSTANDIN_EXIT=after-start:50ms"}})
		bootMinimal(t, p)
		p.ok("PATCH", "/vm", `{"state":"Paused"}`)
		time.Sleep(300 * time.Millisecond)
		if b := p.ok("GET", "/", ""); !strings.Contains(b, `"state":"Paused"`) {
			t.Fatalf("a paused guest reset itself: GET / = %s", b)
		}
		p.ok("PATCH", "/vm", `{"state":"Resumed"}`)
		if st := p.wait(10 * time.Second); !st.Exited() || st.ExitCode() != 0 {
			t.Fatalf("exit after resume: %v", st)
		}
	})
	t.Run("status", func(t *testing.T) {
		p := startFC(t, startOpt{env: []string{"FCSTANDIN_EXIT=after-start:20ms:3"}})
		bootMinimal(t, p)
		if st := p.wait(10 * time.Second); !st.Exited() || st.ExitCode() != 3 {
			t.Fatalf("exit: %v, want status 3", st)
		}
	})
	t.Run("kvm", func(t *testing.T) {
		p := startFC(t, startOpt{env: []string{"FCSTANDIN_EXIT=after-start:20ms:kvm"}})
		bootMinimal(t, p)
		if st := p.wait(10 * time.Second); !st.Exited() || st.ExitCode() != 0 {
			t.Fatalf("exit: %v, want status 0", st)
		}
		if out := p.stdout.String() + p.stderr.String(); !strings.Contains(out, ":fc_vcpu 0") || !strings.Contains(out, "Received KVM_EXIT_INTERNAL_ERROR signal") {
			t.Fatalf("no vCPU line of KVM_EXIT_INTERNAL_ERROR: %s", out)
		}
	})
	for _, bad := range []string{"20ms", "after-start:x", "after-start:20ms:256", "after-start:20ms:-1", "after-start:1s:a", "after-start:1s:kvm:1"} {
		if _, err := ParseArgs(nil, func(k string) string {
			if k == "FCSTANDIN_EXIT" {
				return bad
			}
			return ""
		}); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), "FCSTANDIN_EXIT") {
			t.Errorf("FCSTANDIN_EXIT=%q: %v; want a usage error naming it", bad, err)
		}
	}
}

func TestVsockProtocol(t *testing.T) {
	p := startFC(t, startOpt{})
	vs := filepath.Join(p.dir, "v.sock")
	p.ok("PUT", "/vsock", `{"guest_cid":3,"uds_path":`+jsonStr(vs)+`}`)
	// Pre-boot: the connection waits in the backlog until the device runs.
	early, err := net.Dial("unix", vs)
	if err != nil {
		t.Fatal(err)
	}
	defer early.Close()
	io.WriteString(early, "CONNECT 52\n")
	bootMinimal(t, p)
	early.SetReadDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(early)
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "OK 1073741824") {
		t.Fatalf("early CONNECT: %q %v", line, err)
	}
	io.WriteString(early, "ping\n")
	if echo, err := br.ReadString('\n'); err != nil || echo != "ping\n" {
		t.Fatalf("echo: %q %v", echo, err)
	}
	// Case-insensitive keyword; host ports increase.
	c2 := dialVsock(t, vs, "connect 1024\n")
	if l, _ := bufio.NewReader(c2).ReadString('\n'); l != "OK 1073741825\n" {
		t.Fatalf("second CONNECT: %q", l)
	}
	// A bad command is answered by closing the connection.
	c3 := dialVsock(t, vs, "HELLO 52\n")
	if b, err := io.ReadAll(c3); len(b) != 0 || err != nil {
		t.Fatalf("bad command got %q %v", b, err)
	}
}

func TestHotplugNeedsPCI(t *testing.T) {
	p := startFC(t, startOpt{})
	p.fails("DELETE", "/drives/rootfs", "", fcstandin.MsgPreBoot)
	bootMinimal(t, p)
	p.fails("DELETE", "/drives/rootfs", "", "--enable-pci")
	q := startFC(t, startOpt{args: []string{"--enable-pci"}})
	bootMinimal(t, q)
	r := file(t, q.dir, "data", "d")
	q.ok("PUT", "/drives/data", `{"drive_id":"data","path_on_host":`+jsonStr(r)+`,"is_root_device":false,"is_read_only":true}`)
	q.ok("DELETE", "/drives/data", "")
	q.fails("DELETE", "/drives/data", "", "Device not found")
	v := startFC(t, startOpt{env: []string{"FCSTANDIN_API=v1.0"}})
	if got := rawExchange(t, v.sock, "DELETE /drives/x HTTP/1.1\r\nHost: x\r\n\r\n"); !strings.Contains(got, "Unsupported HTTP method") {
		t.Fatalf("DELETE on v1.0: %q", got)
	}
}

// TestIgnoreStop: with FCSTANDIN_IGNORE_STOP=1 neither SIGTERM nor
// Ctrl-Alt-Del ends the process (a hung guest, a VMM that does not act on
// SIGTERM); SIGKILL does.
func TestIgnoreStop(t *testing.T) {
	p := startFC(t, startOpt{env: []string{"FCSTANDIN_IGNORE_STOP=1", "FCSTANDIN_STOP_DELAY=1ms"}})
	bootMinimal(t, p)
	p.ok("PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`)
	// An ignored signal is discarded when sent: once kill returns, it
	// can no longer end the process.
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if b := p.ok("GET", "/", ""); !strings.Contains(b, `"state":"Running"`) {
		t.Fatalf("after SIGTERM and Ctrl-Alt-Del: GET / = %s", b)
	}
	p.cmd.Process.Kill()
	if sig, ok := signaled(p.wait(10 * time.Second)); !ok || sig != syscall.SIGKILL {
		t.Fatalf("after SIGKILL: %v", p.state)
	}
	if strings.Contains(p.stdout.String(), "reboot: Restarting system") {
		t.Errorf("the guest reacted to Ctrl-Alt-Del: %s", p.stdout)
	}
	for env, bad := range map[string]string{"FCSTANDIN_IGNORE_STOP": "yes", "FCSTANDIN_SNAPSHOT_DELAY": "soon", "FCSTANDIN_ANSWER_DELAY": "PATCH vm=1s"} {
		if _, err := ParseArgs(nil, func(k string) string {
			if k == env {
				return bad
			}
			return ""
		}); !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), env) {
			t.Errorf("%s=%q: %v; want a usage error naming it", env, bad, err)
		}
	}
}
