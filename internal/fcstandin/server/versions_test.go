package server

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestV10Emulation(t *testing.T) {
	p := startFC(t, startOpt{env: []string{"FCSTANDIN_API=v1.0"}})
	if b := p.ok("GET", "/version", ""); b != `{"firecracker_version":"1.0.0"}` {
		t.Fatalf("GET /version = %s", b)
	}
	if b := p.ok("GET", "/", ""); !strings.Contains(b, `"vmm_version":"1.0.0"`) {
		t.Fatalf("GET / = %s", b)
	}
	r := file(t, p.dir, "rootfs", "r")
	k := file(t, p.dir, "k", "k")
	p.fails("PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":`+jsonStr(r)+`,"is_root_device":true}`, "missing field `is_read_only`")
	p.fails("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"huge_pages":"None"}`, "unknown field `huge_pages`")
	p.fails("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"T2S"}`, "unknown variant `T2S`")
	p.fails("PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0","mtu":1500}`, "unknown field `mtu`")
	p.fails("PUT", "/entropy", `{}`, "Invalid request method and/or path: PUT entropy.")
	p.fails("PUT", "/cpu-config", `{}`, "Invalid request method and/or path: PUT cpu-config.")
	p.fails("GET", "/hotplug/memory", "", "Invalid request method and/or path: GET hotplug.")
	p.fails("PUT", "/logger", `{"level":"Info"}`, "missing field `log_path`")
	p.fails("PUT", "/logger", `{"log_path":"x","level":"Trace"}`, "unknown variant `Trace`")
	p.fails("PUT", "/metrics", `{"metrics_path":"x","emit_id":true}`, "") // 400 either way: file missing
	load := `{"snapshot_path":"s","mem_file_path":"m","network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}]}`
	p.fails("PUT", "/snapshot/load", load, "unknown field `network_overrides`")
	p.fails("PUT", "/snapshot/load", `{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"}}`, "unknown field `mem_backend`")
	p.fails("PUT", "/snapshot/load", `{"snapshot_path":"s"}`, "missing field `mem_file_path`")
	p.ok("PUT", "/drives/rootfs", `{"drive_id":"rootfs","path_on_host":`+jsonStr(r)+`,"is_root_device":true,"is_read_only":false}`)
	p.ok("PUT", "/boot-source", `{"kernel_image_path":`+jsonStr(k)+`}`)
	var cfg map[string]any
	json.Unmarshal([]byte(p.ok("GET", "/vm/config", "")), &cfg)
	if _, ok := cfg["entropy"]; ok {
		t.Fatalf("v1.0 /vm/config has entropy: %v", cfg)
	}
	if _, ok := cfg["machine-config"].(map[string]any)["huge_pages"]; ok {
		t.Fatalf("v1.0 machine-config has huge_pages: %v", cfg)
	}
	p.ok("PUT", "/actions", `{"action_type":"InstanceStart"}`)
	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	dir := shortDir(t)
	st, mem := filepath.Join(dir, "s"), filepath.Join(dir, "m")
	p.ok("PUT", "/snapshot/create", `{"snapshot_path":`+jsonStr(st)+`,"mem_file_path":`+jsonStr(mem)+`,"version":"1.0.0"}`)

	// The same request on latest: network_overrides is known there (the
	// load then fails for a real reason: a v1.0 snapshot is not loadable).
	q := startFC(t, startOpt{})
	q.fails("PUT", "/snapshot/load", `{"snapshot_path":`+jsonStr(st)+`,"mem_file_path":`+jsonStr(mem)+`,"network_overrides":[]}`, "Unsupported snapshot version 1.0.0")
	// And a v1.0 process loads it.
	v := startFC(t, startOpt{env: []string{"FCSTANDIN_API=v1.0"}})
	v.ok("PUT", "/snapshot/load", `{"snapshot_path":`+jsonStr(st)+`,"mem_file_path":`+jsonStr(mem)+`,"resume_vm":true}`)
}

func TestDiffSnapshot(t *testing.T) {
	p := startFC(t, startOpt{})
	p.ok("PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":16,"track_dirty_pages":true}`)
	bootMinimal(t, p)
	p.ok("PATCH", "/vm", `{"state":"Paused"}`)
	dir := shortDir(t)
	j := func(s string) string { return jsonStr(filepath.Join(dir, s)) }
	p.ok("PUT", "/snapshot/create", `{"snapshot_path":`+j("base.state")+`,"mem_file_path":`+j("base.mem")+`,"snapshot_type":"Full"}`)
	p.ok("PATCH", "/vm", `{"state":"Resumed"}`)
	p.ok("PATCH", "/vm", `{"state":"Paused"}`) // the guest dirtied some pages meanwhile
	p.ok("PUT", "/snapshot/create", `{"snapshot_path":`+j("diff.state")+`,"mem_file_path":`+j("diff.mem")+`,"snapshot_type":"Diff"}`)

	base, _ := os.ReadFile(filepath.Join(dir, "base.mem"))
	diff, _ := os.ReadFile(filepath.Join(dir, "diff.mem"))
	changed := 0
	for off := 0; off < len(diff); off += pageSize {
		if pg := diff[off : off+pageSize]; !isZero(pg) {
			changed++
			copy(base[off:], pg) // rebase the layer onto the base
		}
	}
	if changed == 0 || changed > 16 {
		t.Fatalf("diff layer has %d pages", changed)
	}
	os.WriteFile(filepath.Join(dir, "merged.mem"), base, 0o644)
	// The diff layer alone is not a memory image; merged onto the base it is.
	q := startFC(t, startOpt{})
	q.fails("PUT", "/snapshot/load", `{"snapshot_path":`+j("diff.state")+`,"mem_backend":{"backend_type":"File","backend_path":`+j("diff.mem")+`},"vsock_override":{"uds_path":"x"}}`, "does not match the snapshot")
	r := startFC(t, startOpt{})
	r.ok("PUT", "/snapshot/load", `{"snapshot_path":`+j("diff.state")+`,"mem_backend":{"backend_type":"File","backend_path":`+j("merged.mem")+`},"track_dirty_pages":true}`)

	// Without dirty page tracking a Diff snapshot is refused.
	s := startFC(t, startOpt{})
	bootMinimal(t, s)
	s.ok("PATCH", "/vm", `{"state":"Paused"}`)
	s.fails("PUT", "/snapshot/create", `{"snapshot_path":`+j("x.state")+`,"mem_file_path":`+j("x.mem")+`,"snapshot_type":"Diff"}`, "track_dirty_pages")
}
