package audit

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/qconv/qconv/internal/regular"
	"io"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"unicode"
)

// Tool names the program in JSON and SARIF output.
type Tool struct {
	Name    string // "qconv"
	Version string // the program version, such as "0.1.0" or "devel"
}

// Formatter writes a report in one output format.
type Formatter interface {
	Format(w io.Writer, r *Report) error
}

// FormatNames lists the names NewFormatter accepts.
func FormatNames() []string { return []string{"text", "json", "sarif", "github", "gitlab"} }

// NewFormatter returns the formatter called name: "text", "json", "sarif",
// "github" or "gitlab".
func NewFormatter(name string, tool Tool) (Formatter, error) {
	switch name {
	case "text":
		return TextFormatter{}, nil
	case "json":
		return JSONFormatter{Tool: tool}, nil
	case "sarif":
		return SARIFFormatter{Tool: tool}, nil
	case "github":
		return GitHubFormatter{}, nil
	case "gitlab":
		return GitLabFormatter{}, nil
	}
	return nil, fmt.Errorf("audit: unknown format %q (want one of %s)", name, strings.Join(FormatNames(), ", "))
}

// TextFormatter writes one finding a line:
//
//	FILE: TENSOR: SEVERITY RULE: MESSAGE
//
// leaving out "TENSOR: " for findings about no tensor. Nothing is written
// for a clean report.
type TextFormatter struct{}

// Format implements Formatter.
func (TextFormatter) Format(w io.Writer, r *Report) error {
	bw := bufio.NewWriter(w)
	for _, d := range r.Findings {
		bw.WriteString(displayName(d.File))
		bw.WriteString(": ")
		if d.Tensor != "" {
			bw.WriteString(displayName(d.Tensor))
			bw.WriteString(": ")
		}
		fmt.Fprintf(bw, "%s %s: %s\n", d.Severity, d.Rule, oneLine(d.Message))
	}
	return bw.Flush()
}

// oneLine replaces line breaks so that a finding stays on one line.
func oneLine(s string) string {
	s = strings.NewReplacer("\r\n", " ", "\n", " ", "\r", " ").Replace(s)
	if !strings.ContainsFunc(s, notPrint) {
		return s
	}
	// Other control characters (an ESC from a tensor name that a rule
	// quoted with %s, say) are written escaped, so that a checkpoint
	// cannot paint the terminal or forge a line of output.
	var b strings.Builder
	for _, r := range s {
		if notPrint(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		} else {
			b.WriteRune(r)
		}
	}
	return b.String()
}

func notPrint(r rune) bool { return !unicode.IsPrint(r) }

// displayName returns a file or tensor name as the text output prints
// it: as is when it is plain printable text, else quoted as Go's %q does.
func displayName(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return notPrint(r) || r == '"' || r == '\\' }) {
		return strconv.Quote(s)
	}
	return s
}

// JSONSchemaVersion is the version of the JSON output's layout; it changes
// only when a field is removed or changes meaning.
const JSONSchemaVersion = 1

// JSONFormatter writes the report as one JSON object:
//
//	{"schema_version": 1, "tool": {"name": ..., "version": ...},
//	 "findings": [{"rule", "severity", "file", "tensor", "message"}...],
//	 "counts": {"error": n, "warning": n, "info": n},
//	 "errors": [{"path", "message"}...]}
//
// "tensor" is "" for findings about no tensor. "errors" lists the paths
// that could not be audited at all (Report.PathErrors); an audit with
// errors is not complete, whatever the findings.
type JSONFormatter struct {
	Tool Tool
}

type jsonFinding struct {
	Rule     string `json:"rule"`
	Severity string `json:"severity"`
	File     string `json:"file"`
	Tensor   string `json:"tensor"`
	Message  string `json:"message"`
}

type jsonTool struct {
	Name    string `json:"name"`
	Version string `json:"version"`
}

type jsonReport struct {
	SchemaVersion int           `json:"schema_version"`
	Tool          jsonTool      `json:"tool"`
	Findings      []jsonFinding `json:"findings"`
	Counts        Counts        `json:"counts"`
	Errors        []jsonError   `json:"errors"`
}

type jsonError struct {
	Path    string `json:"path"`
	Message string `json:"message"`
}

// pathErrors returns the path and message of each of r.PathErrors.
func pathErrors(r *Report) []jsonError {
	out := []jsonError{}
	for _, err := range r.PathErrors {
		var pe *PathError
		if errors.As(err, &pe) {
			out = append(out, jsonError{Path: pe.Path, Message: pe.Msg})
		} else {
			out = append(out, jsonError{Message: strings.TrimPrefix(err.Error(), "audit: ")})
		}
	}
	return out
}

// Format implements Formatter.
func (f JSONFormatter) Format(w io.Writer, r *Report) error {
	out := jsonReport{
		SchemaVersion: JSONSchemaVersion,
		Tool:          jsonTool{Name: f.Tool.Name, Version: f.Tool.Version},
		Findings:      []jsonFinding{},
		Counts:        r.Counts,
		Errors:        pathErrors(r),
	}
	for _, d := range r.Findings {
		out.Findings = append(out.Findings, jsonFinding{
			Rule: d.Rule, Severity: d.Severity.String(), File: d.File, Tensor: d.Tensor, Message: d.Message,
		})
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

// SARIFFormatter writes a SARIF 2.1.0 log with one run, whose driver
// lists every rule that ran with its documentation and a helpUri into
// docs/audit-rules.md. Severities map to SARIF levels error, warning and
// note; the tensor is the result's logical location. Every result has a
// region: the line of the tensor's entry in a JSON file (an index's
// weight_map), else line 1 (a finding is about a file or a tensor, and a
// .safetensors file has no lines); and a
// partialFingerprints entry ("qconvFinding/v1", a hash of rule, file and
// tensor), which GitHub code scanning needs to track a finding across
// runs. The run's invocation says whether the audit succeeded, and lists
// each path that could not be audited as a tool execution notification.
type SARIFFormatter struct {
	Tool Tool
}

// RulesDocURL is the page that documents every rule; each rule has the
// anchor of its lower-case ID ("#st002").
const RulesDocURL = "https://github.com/qconv/qconv/blob/main/docs/audit-rules.md"

// RuleHelpURI returns the documentation URL of the rule with the given ID.
func RuleHelpURI(id string) string { return RulesDocURL + "#" + strings.ToLower(id) }

type sarifLog struct {
	Schema  string     `json:"$schema"`
	Version string     `json:"version"`
	Runs    []sarifRun `json:"runs"`
}

type sarifRun struct {
	Tool        sarifTool         `json:"tool"`
	Invocations []sarifInvocation `json:"invocations"`
	Results     []sarifResult     `json:"results"`
}

type sarifInvocation struct {
	ExecutionSuccessful        bool                `json:"executionSuccessful"`
	ToolExecutionNotifications []sarifNotification `json:"toolExecutionNotifications"`
}

type sarifNotification struct {
	Level     string          `json:"level"`
	Message   sarifText       `json:"message"`
	Locations []sarifLocation `json:"locations,omitempty"`
}

type sarifTool struct {
	Driver sarifDriver `json:"driver"`
}

type sarifDriver struct {
	Name           string      `json:"name"`
	Version        string      `json:"version,omitempty"`
	InformationURI string      `json:"informationUri,omitempty"`
	Rules          []sarifRule `json:"rules"`
}

type sarifText struct {
	Text string `json:"text"`
}

type sarifRule struct {
	ID                   string         `json:"id"`
	Name                 string         `json:"name"`
	ShortDescription     sarifText      `json:"shortDescription"`
	FullDescription      sarifText      `json:"fullDescription"`
	Help                 sarifText      `json:"help"`
	HelpURI              string         `json:"helpUri"`
	DefaultConfiguration sarifRuleLevel `json:"defaultConfiguration"`
	Properties           sarifProps     `json:"properties"`
}

type sarifRuleLevel struct {
	Level string `json:"level"`
}

type sarifProps struct {
	Tags []string `json:"tags"`
}

type sarifResult struct {
	RuleID              string            `json:"ruleId"`
	RuleIndex           int               `json:"ruleIndex"`
	Level               string            `json:"level"`
	Message             sarifText         `json:"message"`
	Locations           []sarifLocation   `json:"locations"`
	PartialFingerprints map[string]string `json:"partialFingerprints"`
}

type sarifLocation struct {
	PhysicalLocation sarifPhysical  `json:"physicalLocation"`
	LogicalLocations []sarifLogical `json:"logicalLocations,omitempty"`
}

type sarifPhysical struct {
	ArtifactLocation sarifArtifact `json:"artifactLocation"`
	Region           *sarifRegion  `json:"region,omitempty"`
}

type sarifRegion struct {
	StartLine int `json:"startLine"`
}

type sarifArtifact struct {
	URI string `json:"uri"`
}

type sarifLogical struct {
	Name string `json:"name"`
	Kind string `json:"kind"`
}

// SARIFLevel maps a severity to a SARIF level: "error", "warning" or
// "note".
func SARIFLevel(s Severity) string {
	switch s {
	case Error:
		return "error"
	case Warning:
		return "warning"
	}
	return "note"
}

// Format implements Formatter.
func (f SARIFFormatter) Format(w io.Writer, r *Report) error {
	driver := sarifDriver{
		Name:           f.Tool.Name,
		Version:        f.Tool.Version,
		InformationURI: "https://github.com/qconv/qconv",
		Rules:          []sarifRule{},
	}
	index := map[string]int{}
	for _, rule := range r.Rules {
		index[rule.ID] = len(driver.Rules)
		driver.Rules = append(driver.Rules, sarifRule{
			ID:                   rule.ID,
			Name:                 RuleName(rule),
			ShortDescription:     sarifText{Text: rule.Title},
			FullDescription:      sarifText{Text: Unwrap(rule.Doc)},
			Help:                 sarifText{Text: Unwrap(rule.Doc)},
			HelpURI:              RuleHelpURI(rule.ID),
			DefaultConfiguration: sarifRuleLevel{Level: SARIFLevel(rule.Severity)},
			Properties:           sarifProps{Tags: []string{GroupTitle(GroupPrefix(rule.ID))}},
		})
	}
	inv := sarifInvocation{ExecutionSuccessful: len(r.PathErrors) == 0, ToolExecutionNotifications: []sarifNotification{}}
	for _, e := range pathErrors(r) {
		n := sarifNotification{Level: "error", Message: sarifText{Text: e.Message}}
		if e.Path != "" {
			n.Message.Text = e.Path + ": " + e.Message
			n.Locations = []sarifLocation{{PhysicalLocation: sarifPhysical{ArtifactLocation: sarifArtifact{URI: fileURI(e.Path)}}}}
		}
		inv.ToolExecutionNotifications = append(inv.ToolExecutionNotifications, n)
	}
	run := sarifRun{Tool: sarifTool{Driver: driver}, Invocations: []sarifInvocation{inv}, Results: []sarifResult{}}
	seen := map[string]int{}
	lines := &keyLines{files: map[string][]byte{}}
	for _, d := range r.Findings {
		res := sarifResult{
			RuleID:    d.Rule,
			RuleIndex: -1,
			Level:     SARIFLevel(d.Severity),
			Message:   sarifText{Text: d.Message},
		}
		if i, ok := index[d.Rule]; ok {
			res.RuleIndex = i
		}
		loc := sarifLocation{PhysicalLocation: sarifPhysical{
			ArtifactLocation: sarifArtifact{URI: fileURI(d.File)},
			Region:           &sarifRegion{StartLine: lines.line(d.File, d.Tensor)},
		}}
		key := d.Rule + "\x00" + filepath.ToSlash(d.File) + "\x00" + d.Tensor
		seen[key]++
		sum := sha256.Sum256([]byte(fmt.Sprintf("%s\x00%d", key, seen[key])))
		res.PartialFingerprints = map[string]string{"qconvFinding/v1": hex.EncodeToString(sum[:16])}
		if d.Tensor != "" {
			loc.LogicalLocations = []sarifLogical{{Name: d.Tensor, Kind: "variable"}}
		}
		res.Locations = []sarifLocation{loc}
		run.Results = append(run.Results, res)
	}
	log := sarifLog{
		Schema:  "https://json.schemastore.org/sarif-2.1.0.json",
		Version: "2.1.0",
		Runs:    []sarifRun{run},
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(log)
}

// keyLines finds the line of a tensor's entry in a JSON file (the
// weight_map of an index), for SARIF regions.
type keyLines struct {
	files map[string][]byte // read once each; nil when unreadable
}

// maxKeyLinesFile bounds the JSON files read for regions (as
// checkpoint.MaxIndexSize bounds an index).
const maxKeyLinesFile = 16 << 20

// line returns the 1-based line of file where tensor is a JSON object key
// (`"name": ...`), or 1: for a finding about no tensor, about a file that
// is not JSON (a .safetensors file has no lines), or when the key is not
// there.
func (k *keyLines) line(file, tensor string) int {
	if tensor == "" || !strings.HasSuffix(file, ".json") {
		return 1
	}
	b, ok := k.files[file]
	if !ok {
		if f, _, err := regular.Open(file); err == nil {
			b, _ = io.ReadAll(io.LimitReader(f, maxKeyLinesFile))
			f.Close()
		}
		k.files[file] = b
	}
	key, err := json.Marshal(tensor)
	if err != nil {
		return 1
	}
	for off := 0; ; {
		i := bytes.Index(b[off:], key)
		if i < 0 {
			return 1
		}
		i += off
		rest := bytes.TrimLeft(b[i+len(key):], " \t\r\n")
		if len(rest) > 0 && rest[0] == ':' {
			return 1 + bytes.Count(b[:i], []byte{'\n'})
		}
		off = i + len(key)
	}
}

// fileURI turns a path into a relative (or, for an absolute path, file:)
// URI reference with forward slashes and percent-escapes.
func fileURI(p string) string {
	p = filepath.ToSlash(p)
	u := url.URL{Path: p}
	if strings.HasPrefix(p, "/") {
		u.Scheme = "file"
	}
	return u.String()
}

// RuleName derives a SARIF rule name (an identifier in PascalCase) from
// the rule's title, such as "PackedWeightStoredAsFloat32".
func RuleName(r *Rule) string {
	var b strings.Builder
	upper := true
	for _, c := range r.Title {
		if !unicode.IsLetter(c) && !unicode.IsDigit(c) {
			upper = true
			continue
		}
		if upper {
			c = unicode.ToUpper(c)
			upper = false
		}
		b.WriteRune(c)
	}
	return b.String()
}

// GitHubFormatter writes GitHub Actions workflow commands, one a finding:
//
//	::error file=FILE,title=RULE::TENSOR: MESSAGE
//
// with ::warning for warnings and ::notice for info, and an ::error for
// each path that could not be audited.
type GitHubFormatter struct{}

// Format implements Formatter.
func (GitHubFormatter) Format(w io.Writer, r *Report) error {
	bw := bufio.NewWriter(w)
	for _, e := range pathErrors(r) {
		fmt.Fprintf(bw, "::error file=%s,title=qconv audit::%s\n", ghProperty(e.Path), ghData("could not be audited: "+e.Message))
	}
	for _, d := range r.Findings {
		cmd := "notice"
		switch d.Severity {
		case Error:
			cmd = "error"
		case Warning:
			cmd = "warning"
		}
		msg := d.Message
		if d.Tensor != "" {
			msg = d.Tensor + ": " + msg
		}
		fmt.Fprintf(bw, "::%s file=%s,title=%s::%s\n", cmd, ghProperty(d.File), ghProperty(d.Rule), ghData(msg))
	}
	return bw.Flush()
}

// ghData escapes a workflow command's message.
func ghData(s string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A").Replace(s)
}

// ghProperty escapes a workflow command's property value.
func ghProperty(s string) string {
	return strings.NewReplacer("%", "%25", "\r", "%0D", "\n", "%0A", ":", "%3A", ",", "%2C").Replace(s)
}

// Unwrap joins the hard-wrapped lines of each paragraph of a rule's Doc
// into one line, keeping the blank lines between paragraphs, for viewers
// that wrap text themselves (SARIF, JSON).
func Unwrap(doc string) string {
	paras := strings.Split(strings.TrimSpace(doc), "\n\n")
	for i, p := range paras {
		paras[i] = strings.Join(strings.Fields(p), " ")
	}
	return strings.Join(paras, "\n\n")
}
