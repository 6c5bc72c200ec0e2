package firecracker

import (
	"strings"
	"testing"
)

// TestExitErrorFromLog: a crash seen by a process that is not
// firecracker's parent (the status is lost) says what firecracker's own
// last log line claims, as a claim, with the code's meaning; the status
// stays unknown. Only firecracker's line for this VM counts.
func TestExitErrorFromLog(t *testing.T) {
	log := []string{
		`2026-12-07T00:28:35.237138809 [g1:fc_vcpu 0] Received KVM_EXIT_INTERNAL_ERROR signal`,
		`Error: RunWithApi(MicroVMStoppedWithError(GenericError))`,
		`2026-12-07T00:28:35.264426087 [g1:main] Firecracker exiting with error. exit_code=1`,
	}
	e := exitError("g1", 42, exitInfo{}, log)
	if e.ExitCode != -1 || !strings.Contains(e.Error(), "exit status unknown (firecracker's log says exit_code=1 after KVM_EXIT_INTERNAL_ERROR on vCPU 0: KVM could not run the guest)") {
		t.Errorf("unknown status with a logged exit after a vCPU fault: %q (code %d)", e.Error(), e.ExitCode)
	}
	e = exitError("g1", 42, exitInfo{}, log[1:])
	if e.ExitCode != -1 || !strings.HasSuffix(e.Error(), "exit status unknown (firecracker's log says exit_code=1)") {
		t.Errorf("unknown status with a logged exit: %q (code %d)", e.Error(), e.ExitCode)
	}
	// Our child: the status, and the vCPU's fault as the log's claim.
	e = exitError("g1", 42, exitInfo{known: true, code: 1}, log)
	if !strings.HasSuffix(e.Error(), "exit status 1 (firecracker's log says KVM_EXIT_INTERNAL_ERROR on vCPU 0: KVM could not run the guest)") || len(e.Error()) >= 300 {
		t.Errorf("known status 1 after a vCPU fault: %q", e.Error())
	}
	// v1.0's form of the line, and no exit line after it.
	v10 := []string{`2026-12-07T03:44:26.110195122 [g1:fc_vcpu 0:ERROR:src/vmm/src/vstate/vcpu/mod.rs:490] Received KVM_EXIT_INTERNAL_ERROR signal`}
	if e := exitError("g1", 42, exitInfo{}, v10); !strings.HasSuffix(e.Error(), "exit status unknown (firecracker's log says KVM_EXIT_INTERNAL_ERROR on vCPU 0: KVM could not run the guest)") {
		t.Errorf("v1.0 vCPU fault: %q", e.Error())
	}
	// Another VM's vCPU line, or one without a fault, says nothing.
	for _, other := range []string{`2026 [g2:fc_vcpu 0] Received KVM_EXIT_INTERNAL_ERROR signal`, `2026 [g1:fc_vcpu 0] vcpu: IO write @ 0xcf8:0x4 failed`} {
		if e := exitError("g1", 42, exitInfo{known: true, code: 1}, []string{other}); e.Reason != "" {
			t.Errorf("%q: reason %q, want none", other, e.Reason)
		}
	}
	e = exitError("g1", 42, exitInfo{}, []string{`2026 [g1:main] Firecracker exiting with error. exit_code=149`})
	if !strings.Contains(e.Error(), "exit_code=149: firecracker caught SIGBUS") {
		t.Errorf("logged 149: %q", e.Error())
	}
	for _, other := range [][]string{
		{`2026 [other:main] Firecracker exiting with error. exit_code=1`}, // another VM's line
		{`Firecracker exiting with error. exit_code=1`},                   // no prefix: the guest's
		{`2026 [g1:main] Firecracker exiting with error. exit_code=x`},
		nil,
	} {
		if e := exitError("g1", 42, exitInfo{}, other); e.Reason != "" || !strings.HasSuffix(e.Error(), "exit status unknown") {
			t.Errorf("%q: %q, want no claim", other, e.Error())
		}
	}
	// A known status is the status, whatever the log says of the exit.
	e = exitError("g1", 42, exitInfo{known: true, code: 1}, log[1:])
	if e.ExitCode != 1 || strings.Contains(e.Error(), "log says") {
		t.Errorf("known status: %q", e.Error())
	}
}
