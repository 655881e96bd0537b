package audit

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
)

// GitLabFormatter writes a GitLab Code Quality report: a JSON array with
// one issue a finding, in the subset of the Code Climate format that
// GitLab reads (GitLab documentation, "Code Quality", section "Code
// Quality report format", GitLab 17): description, check_name (the rule
// ID), fingerprint, severity and location.path with location.lines.begin.
// A CI job names the file in artifacts:reports:codequality and merge
// requests show the findings. Severities map error to "critical", warning
// to "minor" and info to "info". Checkpoint files have no lines, so
// lines.begin is 1. The fingerprint is the SHA-256 of rule, file, tensor
// and message, so the same finding keeps it from run to run and GitLab can
// tell new findings from fixed ones. A path that could not be audited is
// an issue of severity "blocker" with check_name "qconv-audit-path". A
// clean report is "[]".
type GitLabFormatter struct{}

type gitlabIssue struct {
	Description string         `json:"description"`
	CheckName   string         `json:"check_name"`
	Fingerprint string         `json:"fingerprint"`
	Severity    string         `json:"severity"`
	Location    gitlabLocation `json:"location"`
}

type gitlabLocation struct {
	Path  string      `json:"path"`
	Lines gitlabLines `json:"lines"`
}

type gitlabLines struct {
	Begin int `json:"begin"`
}

// gitlabSeverity maps severities to GitLab's (info, minor, major,
// critical, blocker).
var gitlabSeverity = map[Severity]string{Error: "critical", Warning: "minor", Info: "info"}

// Format implements Formatter.
func (GitLabFormatter) Format(w io.Writer, r *Report) error {
	issues := make([]gitlabIssue, 0, len(r.Findings))
	for _, d := range r.Findings {
		desc := d.Rule + ": " + d.Message
		if d.Tensor != "" {
			desc = d.Rule + ": " + d.Tensor + ": " + d.Message
		}
		h := sha256.New()
		for _, s := range []string{d.Rule, d.File, d.Tensor, d.Message} {
			h.Write([]byte(s))
			h.Write([]byte{0})
		}
		issues = append(issues, gitlabIssue{
			Description: desc,
			CheckName:   d.Rule,
			Fingerprint: hex.EncodeToString(h.Sum(nil)),
			Severity:    gitlabSeverity[d.Severity],
			Location:    gitlabLocation{Path: d.File, Lines: gitlabLines{Begin: 1}},
		})
	}
	// A path that could not be audited is a blocker: the report is
	// incomplete, whatever it says about the others.
	for _, e := range pathErrors(r) {
		sum := sha256.Sum256([]byte("qconv-audit-path\x00" + e.Path + "\x00" + e.Message))
		issues = append(issues, gitlabIssue{
			Description: "could not be audited: " + e.Message,
			CheckName:   "qconv-audit-path",
			Fingerprint: hex.EncodeToString(sum[:]),
			Severity:    "blocker",
			Location:    gitlabLocation{Path: e.Path, Lines: gitlabLines{Begin: 1}},
		})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(issues)
}
