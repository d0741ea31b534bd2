package loadgen

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

// StepCAVersion is the step-ca release the comparison builds when given no
// binary: the version of github.com/smallstep/certificates in go.mod (the
// e2e test checks that they agree).
const StepCAVersion = "v0.30.2"

// stepCAPackage is step-ca's command.
const stepCAPackage = "github.com/smallstep/certificates/cmd/step-ca"

// StepCABuild says where the step-ca binary came from.
type StepCABuild struct {
	Path    string `json:"path"`
	Version string `json:"version"`
	// How: "given" (--step-ca-bin), "cached" (built by an earlier run) or
	// "built" (now, with Command).
	How     string  `json:"how"`
	Command string  `json:"command,omitempty"`
	Seconds float64 `json:"seconds,omitempty"`
}

// ErrStepCABuild wraps every failure to build step-ca: the comparison is
// then skipped, never faked.
var ErrStepCABuild = errors.New("building step-ca")

// BuildStepCA returns a step-ca binary of version (StepCAVersion if "")
// under cacheDir (os.UserCacheDir()/edgeenroll/step-ca if ""), building it
// when it is not there yet with
//
//	CGO_ENABLED=0 GOBIN=... go install -trimpath -ldflags "-X main.Version=<version>" \
//	  github.com/smallstep/certificates/cmd/step-ca@<version>
//
// from the Go module proxy, outside this module: step-ca's own go.mod
// decides its dependencies, as for its releases (which are built with
// CGO_ENABLED=0 and -trimpath; with cgo its YubiKey KMS would need
// libpcsclite). Building it inside this module does not work: step-ca's
// command links KMS and CAS back ends (AWS, Azure, Google Cloud, Vault,
// YubiKey) whose modules are not in this module's go.sum, since only the
// CA server package is a (test) dependency here. A build takes minutes;
// the binary is kept for the next run. Errors wrap ErrStepCABuild.
func BuildStepCA(ctx context.Context, version, cacheDir string, progress io.Writer) (*StepCABuild, error) {
	if version == "" {
		version = StepCAVersion
	}
	if progress == nil {
		progress = io.Discard
	}
	if !strings.HasPrefix(version, "v") || strings.ContainsAny(version, "/ \t\n@") {
		return nil, fmt.Errorf("%w: version %q: want a module version such as %s", ErrStepCABuild, version, StepCAVersion)
	}
	if cacheDir == "" {
		base, err := os.UserCacheDir()
		if err != nil {
			return nil, fmt.Errorf("%w: no cache directory (give --step-ca-cache): %w", ErrStepCABuild, err)
		}
		cacheDir = filepath.Join(base, "edgeenroll", "step-ca")
	}
	dir := filepath.Join(cacheDir, version)
	bin := filepath.Join(dir, "step-ca")
	if fi, err := os.Stat(bin); err == nil && fi.Mode().IsRegular() && fi.Mode()&0o111 != 0 {
		return &StepCABuild{Path: bin, Version: version, How: "cached"}, nil
	}
	goBin, err := exec.LookPath("go")
	if err != nil {
		return nil, fmt.Errorf("%w: no go command: %w", ErrStepCABuild, err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStepCABuild, err)
	}
	// Install into a directory of our own, then rename: two runs building
	// at once each get a whole binary.
	tmp, err := os.MkdirTemp(dir, "build-")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStepCABuild, err)
	}
	defer os.RemoveAll(tmp)
	args := []string{"install", "-trimpath", "-ldflags", "-w -X main.Version=" + version, stepCAPackage + "@" + version}
	cmd := exec.CommandContext(ctx, goBin, args...)
	// Outside any module or workspace, so step-ca's own go.mod rules.
	cmd.Dir = tmp
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOBIN="+tmp, "GOFLAGS=", "GOWORK=off")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	command := "CGO_ENABLED=0 go " + strings.Join(args[:3], " ") + ` "` + args[3] + `" ` + args[4]
	fmt.Fprintf(progress, "building step-ca %s: %s (takes minutes; kept in %s)\n", version, command, dir)
	start := time.Now()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w: %w", ErrStepCABuild, ctx.Err())
		}
		return nil, fmt.Errorf("%w: %s: %w: %s", ErrStepCABuild, command, err, stepCALastLines(out.String(), 12))
	}
	elapsed := time.Since(start)
	if err := os.Rename(filepath.Join(tmp, "step-ca"), bin); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrStepCABuild, err)
	}
	return &StepCABuild{Path: bin, Version: version, How: "built", Command: command, Seconds: round3(elapsed.Seconds())}, nil
}

// stepCALastLines is the last n lines of s, joined by " | " for a one-line message.
func stepCALastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = append([]string{"..."}, lines[len(lines)-n:]...)
	}
	return strings.Join(lines, " | ")
}
