package tptoken

import (
	"os/exec"
	"strings"
	"testing"
)

// The production build must not carry the platform emulator: its control
// surface reveals every secret it issued.
func TestProductionBuildLeavesTheEmulatorOut(t *testing.T) {
	if testing.Short() {
		t.Skip("runs go list")
	}
	deps := func(pkg string) string {
		out, err := exec.Command("go", "list", "-deps", pkg).CombinedOutput()
		if err != nil {
			t.Fatalf("go list -deps %s: %v\n%s", pkg, err, out)
		}
		return string(out)
	}
	const emu = "github.com/tptoken/caddy-tptoken/emulator\n"
	if strings.Contains(deps("./cmd/caddy"), emu) {
		t.Error("./cmd/caddy (the production build) imports the emulator")
	}
	if !strings.Contains(deps("./cmd/caddy-sandbox"), emu) {
		t.Error("./cmd/caddy-sandbox lacks the emulator that make run and bench-load need")
	}
	if strings.Contains(deps("."), emu) {
		t.Error("the root package (what xcaddy builds) imports the emulator")
	}
}
