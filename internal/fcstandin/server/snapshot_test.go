package server

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mvm-dev/microvm/internal/fcstandin"
)

// snapshotOf boots a VM with id, pauses it and snapshots it into dir.
func snapshotOf(t *testing.T, id, dir string, extra string) (p *proc, state, mem string) {
	t.Helper()
	p = startFC(t, startOpt{id: id})
	if extra != "" {
		p.ok("PUT", "/machine-config", extra)
	}
	vs := filepath.Join(p.dir, "v.sock")
	p.ok("PUT", "/vsock", `{"guest_cid":3,"uds_path":`+jsonStr(vs)+`}`)
	bootMinimal(t, p)
	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	state, mem = filepath.Join(dir, id+".state"), filepath.Join(dir, id+".mem")
	p.ok("PUT", "/snapshot/create", `{"snapshot_path":`+jsonStr(state)+`,"mem_file_path":`+jsonStr(mem)+`}`)
	return p, state, mem
}

func readState(t *testing.T, path string) *snapshotState {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := decodeState(b, snapshotFormat[fcstandin.APILatest])
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func TestSnapshotFileRoundTrip(t *testing.T) {
	dir := shortDir(t)
	a, state, mem := snapshotOf(t, "vm-a", dir, "")
	fi, err := os.Stat(mem)
	if err != nil || fi.Size() != 128<<20 {
		t.Fatalf("memory file: %v %v", fi, err)
	}
	if blocks := fi.Sys().(*syscall.Stat_t).Blocks * 512; blocks > fi.Size()/8 {
		t.Fatalf("memory file is not sparse: %d bytes allocated", blocks)
	}
	// A second VM gets different memory.
	_, stateB, _ := snapshotOf(t, "vm-b", dir, "")
	if readState(t, state).MemoryDigest == readState(t, stateB).MemoryDigest {
		t.Fatal("two VMs produced the same guest memory")
	}
	a.ok("PATCH", "/vm", `{"state":"Resumed"}`)

	// Restore in a fresh process, with the vsock moved.
	b := startFC(t, startOpt{})
	vs := filepath.Join(b.dir, "moved.sock")
	code, _, h := b.do("PUT", "/snapshot/load", `{"snapshot_path":`+jsonStr(state)+`,"mem_file_path":`+jsonStr(mem)+`,"resume_vm":true,"vsock_override":{"uds_path":`+jsonStr(vs)+`}}`)
	if code != 204 || h.Get("Deprecation") != "true" {
		t.Fatalf("load with mem_file_path: %d %v stderr %s", code, h, b.stderr)
	}
	if s := b.ok("GET", "/", ""); !strings.Contains(s, `"state":"Running"`) {
		t.Fatalf("after load: %s", s)
	}
	var cfg map[string]any
	json.Unmarshal([]byte(b.ok("GET", "/vm/config", "")), &cfg)
	if cfg["boot-source"] != nil || len(cfg["drives"].([]any)) != 1 || cfg["vsock"].(map[string]any)["uds_path"] != vs {
		t.Fatalf("restored config: %v", cfg)
	}
	c := dialVsock(t, vs, "CONNECT 7\n")
	if l, _ := bufio.NewReader(c).ReadString('\n'); !strings.HasPrefix(l, "OK ") {
		t.Fatalf("vsock after restore: %q", l)
	}
	// Snapshot the restored VM again (elsewhere), then load that too.
	b.ok("PATCH", "/vm", `{"state":"Paused"}`)
	state2, mem2 := filepath.Join(dir, "again.state"), filepath.Join(dir, "again.mem")
	b.ok("PUT", "/snapshot/create", `{"snapshot_path":`+jsonStr(state2)+`,"mem_file_path":`+jsonStr(mem2)+`}`)
	d := startFC(t, startOpt{})
	d.ok("PUT", "/snapshot/load", `{"snapshot_path":`+jsonStr(state2)+`,"mem_backend":{"backend_type":"File","backend_path":`+jsonStr(mem2)+`},"vsock_override":{"uds_path":`+jsonStr(filepath.Join(d.dir, "v2.sock"))+`}}`)
	if s := d.ok("GET", "/", ""); !strings.Contains(s, `"state":"Paused"`) {
		t.Fatalf("load without resume_vm: %s", s)
	}
	// Overwriting the memory file that backs b's guest kills it (SIGBUS).
	req, _ := newReq("PUT", "/snapshot/create", `{"snapshot_path":`+jsonStr(filepath.Join(dir, "x.state"))+`,"mem_file_path":`+jsonStr(mem)+`}`)
	if resp, err := b.client.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("overwriting the backing memory file did not crash")
	}
	if sig, ok := signaled(b.wait(10 * time.Second)); !ok || sig != syscall.SIGBUS {
		t.Fatalf("want SIGBUS, got %v", b.state)
	}
}

func TestSnapshotLoadFailuresAreFatal(t *testing.T) {
	dir := shortDir(t)
	_, state, mem := snapshotOf(t, "vm-a", dir, `{"vcpu_count":1,"mem_size_mib":16}`)
	corrupt := filepath.Join(dir, "corrupt.mem")
	data, _ := os.ReadFile(mem)
	data[100] ^= 0xff
	os.WriteFile(corrupt, data, 0o644)
	garbage := file(t, dir, "garbage.state", "not a snapshot at all")
	raw, _ := os.ReadFile(state)
	truncated := file(t, dir, "trunc.state", string(raw[:len(raw)/2]))
	st := readState(t, state)
	st.FormatVersion = "9.0.0"
	newer, _ := encodeState(st)
	newerPath := file(t, dir, "newer.state", string(newer))

	// Each failed load leaves its bound vsock socket behind (like Firecracker),
	// so every case moves the vsock somewhere new.
	n := 0
	ovs := func() string {
		n++
		return `,"vsock_override":{"uds_path":` + jsonStr(filepath.Join(dir, fmt.Sprintf("ov%d.sock", n))) + `}}`
	}
	for _, c := range []struct{ name, body, want string }{
		{"memory digest", `{"snapshot_path":` + jsonStr(state) + `,"mem_backend":{"backend_type":"File","backend_path":` + jsonStr(corrupt) + `}` + ovs(), "does not match the snapshot"},
		{"bad magic", `{"snapshot_path":` + jsonStr(garbage) + `,"mem_backend":{"backend_type":"File","backend_path":` + jsonStr(mem) + `}` + ovs(), "Invalid magic id"},
		{"truncated", `{"snapshot_path":` + jsonStr(truncated) + `,"mem_backend":{"backend_type":"File","backend_path":` + jsonStr(mem) + `}` + ovs(), "truncated"},
		{"newer version", `{"snapshot_path":` + jsonStr(newerPath) + `,"mem_backend":{"backend_type":"File","backend_path":` + jsonStr(mem) + `}` + ovs(), "Unsupported snapshot version 9.0.0"},
		{"missing state", `{"snapshot_path":"/nonexistent","mem_backend":{"backend_type":"File","backend_path":` + jsonStr(mem) + `}` + ovs(), "No such file or directory"},
		{"missing memory", `{"snapshot_path":` + jsonStr(state) + `,"mem_backend":{"backend_type":"File","backend_path":"/nonexistent"}` + ovs(), "No such file or directory"},
		{"unknown override iface", `{"snapshot_path":` + jsonStr(state) + `,"mem_backend":{"backend_type":"File","backend_path":` + jsonStr(mem) + `},"network_overrides":[{"iface_id":"eth7","host_dev_name":"tap7"}]` + ovs(), "eth7"},
		{"vsock path taken", `{"snapshot_path":` + jsonStr(state) + `,"mem_backend":{"backend_type":"File","backend_path":` + jsonStr(mem) + `}}`, "Address in use"},
	} {
		t.Run(c.name, func(t *testing.T) {
			p := startFC(t, startOpt{})
			p.fails("PUT", "/snapshot/load", c.body, "Load snapshot error: Failed to restore from snapshot: ")
			p.fails2(c.want)
			st := p.wait(10 * time.Second)
			if st.ExitCode() != 1 {
				t.Fatalf("exit after failed load: %v", st)
			}
		})
	}
}
