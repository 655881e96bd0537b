package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"
)

// defaultVersion is the version of builds that do not set one.
const defaultVersion = "dev"

// version is the release version. Release builds set it with
//
//	go build -ldflags "-X main.version=v1.2.3" ./cmd/qconv
//
// It is a variable only because -X can set nothing else; nothing assigns it.
var version = defaultVersion

const versionUsage = `
usage: qconv version

Print the qconv version, the commit it was built from (when known) and the
Go toolchain.
`

func versionCommand() *command {
	return &command{
		name:    "version",
		summary: "print the qconv version",
		run:     runVersion,
	}
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fs := newFlagSet("version")
	pos, code, ok := parseFlags(fs, versionUsage, args, stdout, stderr)
	if !ok {
		return code
	}
	if len(pos) > 0 {
		return usageError(stderr, "version", "unexpected argument %q", pos[0])
	}
	fmt.Fprintln(stdout, versionString())
	return exitOK
}

// versionString returns "qconv VERSION (DETAILS)", where DETAILS come from
// the build information embedded by the go command: the VCS revision and
// whether the tree was modified, and the Go version and platform.
func versionString() string {
	v := version
	var details []string
	if bi, ok := debug.ReadBuildInfo(); ok {
		if v == defaultVersion && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			v = bi.Main.Version // installed with go install module@version
		}
		var rev, modified string
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				rev = s.Value
			case "vcs.modified":
				modified = s.Value
			}
		}
		if rev != "" {
			if len(rev) > 12 {
				rev = rev[:12]
			}
			if modified == "true" {
				rev += "+modified"
			}
			details = append(details, "commit "+rev)
		}
	}
	details = append(details, runtime.Version(), runtime.GOOS+"/"+runtime.GOARCH)
	return "qconv " + v + " (" + strings.Join(details, ", ") + ")"
}
