// Package conf reads the Luna-compatible client configuration file used by
// libhaext: Chrystoki.conf (the Linux "brace" format) or crystoki.ini (the
// Windows INI format).
//
// Only the keys libhaext needs are read: the PKCS#11 module path
// (Chrystoki2), the HA groups (VirtualToken), the HA settings
// (HAConfiguration) and this project's member endpoints
// (HAMemberEndpoints). Every other section and key is ignored. Section and
// key names are case-insensitive, as in Luna.
package conf

import (
	"bytes"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"gopkg.in/ini.v1"
)

const (
	// DefaultStatusTimeout is the status timeout used when statusTimeout is
	// missing or invalid.
	DefaultStatusTimeout = 3 * time.Second
	// MaxStatusTimeout is the largest status timeout; larger values are
	// clamped to it.
	MaxStatusTimeout = 60 * time.Second
	// MaxMembers is the largest number of members an HA group may have.
	MaxMembers = 32
	// DefaultFile is the configuration file used when EnvPath is not set.
	DefaultFile = "/etc/Chrystoki.conf"
	// EnvPath is the environment variable naming the directory that holds
	// Chrystoki.conf or crystoki.ini.
	EnvPath = "ChrystokiConfigurationPath"
)

const (
	// maxFileSize is the largest configuration file Load accepts.
	maxFileSize = 4 << 20
	// defaultLogLen is the HA log rotation size used when logLen is absent,
	// zero or invalid.
	defaultLogLen = 1 << 20

	secChrystoki2 = "Chrystoki2"
	secVirtual    = "VirtualToken"
	secHA         = "HAConfiguration"
	secEndpoints  = "HAMemberEndpoints"
)

// Member is one member of an HA group.
type Member struct {
	// Serial is the member's serial number, parsed with ParseSerial.
	Serial uint64
	// SerialText is the serial as written in the file, trimmed.
	SerialText string
	// Endpoint is where the member's status can be queried; nil when
	// HAMemberEndpoints has no entry for this member.
	Endpoint *Endpoint
}

// Group is an HA group (a virtual token) defined in the VirtualToken
// section.
type Group struct {
	// Index is NN of the VirtualTokenNN... keys.
	Index int
	// Label is VirtualTokenNNLabel (may be empty).
	Label string
	// Serial is VirtualTokenNNSN, parsed with ParseSerial.
	Serial uint64
	// Members are the members listed in VirtualTokenNNMembers, in file order.
	Members []Member
}

// HALog holds the HA logging settings of the HAConfiguration section.
type HALog struct {
	// Enabled is true when haLogStatus is "enabled" (case-insensitive) and
	// haLogPath is set.
	Enabled bool
	// Dir is haLogPath, a directory; the log file is Dir/haErrorLog.txt.
	Dir string
	// MaxBytes is logLen: the log is rotated at this many bytes. Parse sets
	// it to the default of 1 MiB when logLen is absent, 0 or invalid, so it
	// is always positive in a parsed Config.
	MaxBytes int64
	// ToStdout is true when haLogToStdout is "enabled" (case-insensitive).
	ToStdout bool
}

// Config is the part of the configuration file libhaext uses.
type Config struct {
	// File is the path (or name) the configuration was read from.
	File string
	// ModulePath is the vendor PKCS#11 module: Chrystoki2/LibHAExtVendor
	// (libhaext's own key), else Chrystoki2/LibUNIX64, else LibUNIX.
	ModulePath string
	// ModuleKey names the key that supplied ModulePath, as section/key for
	// messages: "Chrystoki2/LibHAExtVendor", "Chrystoki2/LibUNIX64" or
	// "Chrystoki2/LibUNIX".
	ModuleKey string
	// Groups are the HA groups, in ascending order of their index NN.
	Groups []Group
	// NoSession is true when HAConfiguration/haExtMonitorSession is
	// "disabled": libhaext then holds no session of its own, and stage 3
	// is C_GetTokenInfo on the member's slot.
	NoSession bool
	// StatusTimeout is HAConfiguration/statusTimeout.
	StatusTimeout time.Duration
	// HALog holds the HA logging settings.
	HALog HALog
	// Warnings lists non-fatal problems, each naming the file and key.
	Warnings []string
}

// GroupBySerial returns the group whose serial is serial.
func (c *Config) GroupBySerial(serial uint64) (*Group, bool) {
	for i := range c.Groups {
		if c.Groups[i].Serial == serial {
			return &c.Groups[i], true
		}
	}
	return nil, false
}

// Locate finds the configuration file. If getenv(EnvPath) is not empty it
// names a directory: DIR/Chrystoki.conf is used if it exists, else
// DIR/crystoki.ini; if neither exists Locate fails. Otherwise DefaultFile is
// used, and Locate fails if it does not exist. exists reports whether a path
// exists (production code passes a function based on os.Stat).
func Locate(getenv func(string) string, exists func(string) bool) (string, error) {
	if dir := getenv(EnvPath); dir != "" {
		conf := filepath.Join(dir, "Chrystoki.conf")
		if exists(conf) {
			return conf, nil
		}
		win := filepath.Join(dir, "crystoki.ini")
		if exists(win) {
			return win, nil
		}
		return "", fmt.Errorf("%s=%s: neither %s nor %s exists", EnvPath, dir, conf, win)
	}
	if exists(DefaultFile) {
		return DefaultFile, nil
	}
	return "", fmt.Errorf("%s does not exist and %s is not set (set it to the directory holding Chrystoki.conf or crystoki.ini)",
		DefaultFile, EnvPath)
}

// Load reads the configuration file at path and parses it with Parse. It
// refuses files that are not regular files or are larger than 4 MiB.
func Load(path string) (*Config, error) {
	// Stat before opening so that opening a FIFO cannot block.
	st, err := os.Stat(path)
	if err != nil {
		return nil, fmt.Errorf("configuration file: %w", err)
	}
	if err := checkFileInfo(path, st); err != nil {
		return nil, err
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("configuration file: %w", err)
	}
	defer f.Close()
	if st, err = f.Stat(); err != nil {
		return nil, fmt.Errorf("configuration file: %w", err)
	}
	if err := checkFileInfo(path, st); err != nil {
		return nil, err
	}
	data, err := io.ReadAll(io.LimitReader(f, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("configuration file %s: %w", path, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("configuration file %s is larger than the %d MiB limit", path, maxFileSize>>20)
	}
	return Parse(path, data)
}

// checkFileInfo refuses non-regular and oversized files.
func checkFileInfo(path string, st fs.FileInfo) error {
	if !st.Mode().IsRegular() {
		return fmt.Errorf("configuration file %s is not a regular file (mode %v)", path, st.Mode().Type())
	}
	if st.Size() > maxFileSize {
		return fmt.Errorf("configuration file %s is %d bytes, larger than the %d MiB limit",
			path, st.Size(), maxFileSize>>20)
	}
	return nil
}

// Parse parses configuration data; name (normally the file path) is used
// in messages and stored in Config.File. The format is INI when the first
// line that is neither blank nor a comment starts with '['; otherwise it is
// the brace format, which is converted with ToINI first.
func Parse(name string, data []byte) (*Config, error) {
	data = bytes.TrimPrefix(data, []byte(utf8BOM))
	iniData := data
	if !looksLikeINI(data) {
		var err error
		if iniData, err = toINI(name, data); err != nil {
			return nil, err
		}
	}
	f, err := loadINI(iniData)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	p := &parser{name: name, f: f, cfg: &Config{File: name}}
	if err := p.parse(); err != nil {
		return nil, err
	}
	return p.cfg, nil
}

// looksLikeINI reports whether the first line that is neither blank nor a
// comment starts with '['.
func looksLikeINI(data []byte) bool {
	for rest := data; len(rest) > 0; {
		var line []byte
		line, rest = nextLine(rest)
		s := strings.TrimSpace(string(line))
		if s == "" || isComment(s) {
			continue
		}
		return s[0] == '['
	}
	return false
}

// iniOptions are the go-ini options used to read both formats.
func iniOptions() ini.LoadOptions {
	return ini.LoadOptions{
		// Luna section and key names are case-insensitive.
		Insensitive: true,
		// Values contain ':' (endpoints, Windows paths).
		KeyValueDelimiters: "=",
		// Values may contain '#' and ';'.
		IgnoreInlineComment: true,
		// Windows paths end with '\'.
		IgnoreContinuation: true,
	}
}

// loadINI reads INI text with go-ini, turning a panic in go-ini into an
// error.
func loadINI(data []byte) (f *ini.File, err error) {
	defer func() {
		if r := recover(); r != nil {
			f, err = nil, fmt.Errorf("reading INI: internal error: %v", r)
		}
	}()
	f, err = ini.LoadSources(iniOptions(), data)
	if err != nil {
		return nil, fmt.Errorf("reading INI: %w", iniError{err})
	}
	return f, nil
}

// iniError wraps a go-ini error, whose message may end with the offending
// line's newline, so that the message is a single trimmed line.
type iniError struct{ err error }

func (e iniError) Error() string { return strings.TrimSpace(e.err.Error()) }
func (e iniError) Unwrap() error { return e.err }
