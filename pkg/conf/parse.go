package conf

// The parser: from a loaded INI file to a Config, section by section.

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"gopkg.in/ini.v1"
)

// parser extracts a Config from a loaded INI file.
type parser struct {
	name string
	f    *ini.File
	cfg  *Config
}

// keyError wraps err with the file name and section/key.
func (p *parser) keyError(section, key string, err error) error {
	return fmt.Errorf("%s: %s/%s: %w", p.name, section, key, err)
}

// warn records a warning naming the file and section/key.
func (p *parser) warn(section, key, format string, args ...any) {
	p.cfg.Warnings = append(p.cfg.Warnings,
		fmt.Sprintf("%s: %s/%s: %s", p.name, section, key, fmt.Sprintf(format, args...)))
}

// section returns the named section, or nil.
func (p *parser) section(name string) *ini.Section {
	s, err := p.f.GetSection(name)
	if err != nil {
		return nil
	}
	return s
}

// value returns the trimmed value of section/key and whether it exists.
func value(s *ini.Section, key string) (string, bool) {
	if s == nil || !s.HasKey(key) {
		return "", false
	}
	return strings.TrimSpace(s.Key(key).Value()), true
}

func (p *parser) parse() error {
	if err := p.parseModule(); err != nil {
		return err
	}
	if err := p.parseGroups(); err != nil {
		return err
	}
	p.parseHAConfiguration()
	return p.parseEndpoints()
}

func (p *parser) parseModule() error {
	s := p.section(secChrystoki2)
	// LibHAExtVendor first: a host that reads LibUNIX64 itself to find its
	// cryptoki points it at the front module, whose vendor this is.
	for _, k := range []string{"LibHAExtVendor", "LibUNIX64", "LibUNIX"} {
		if v, _ := value(s, k); v != "" {
			p.cfg.ModulePath, p.cfg.ModuleKey = v, secChrystoki2+"/"+k
			return nil
		}
	}
	return fmt.Errorf("%s: %s: neither LibUNIX64 nor LibUNIX is set: no PKCS#11 module to load", p.name, secChrystoki2)
}

// groupKeys holds the raw VirtualTokenNN keys of one group.
type groupKeys struct {
	label, sn, members       string
	hasLabel, hasSN, hasMemb bool
}

// groupFields maps the lower-cased field of a VirtualTokenNN key to its
// canonical spelling.
var groupFields = map[string]string{"label": "Label", "sn": "SN", "members": "Members"}

// splitGroupKey parses a lower-cased key "virtualtoken<digits><field>" with
// field label, sn or members. digits is the group index as written; a
// caller accepts exactly two. ok is false for any other key.
func splitGroupKey(key string) (digits, field string, ok bool) {
	rest, found := strings.CutPrefix(key, "virtualtoken")
	if !found {
		return "", "", false
	}
	i := 0
	for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
		i++
	}
	if _, known := groupFields[rest[i:]]; i == 0 || !known {
		return "", "", false
	}
	return rest[:i], rest[i:], true
}

func groupKeyName(nn int, field string) string {
	return fmt.Sprintf("VirtualToken%02d%s", nn, field)
}

func (p *parser) parseGroups() error {
	raw := p.rawGroups()
	if len(raw) == 0 {
		return fmt.Errorf("%s: %s: no HA groups defined (no VirtualTokenNNLabel/SN/Members keys): nothing to report on",
			p.name, secVirtual)
	}
	indexes := make([]int, 0, len(raw))
	for nn := range raw {
		indexes = append(indexes, nn)
	}
	sort.Ints(indexes)

	groupBySerial := map[uint64]int{}
	for _, nn := range indexes {
		g, err := p.parseGroup(nn, raw[nn])
		if err != nil {
			return err
		}
		if prev, dup := groupBySerial[g.Serial]; dup {
			return p.keyError(secVirtual, groupKeyName(nn, "SN"),
				fmt.Errorf("serial %d is also the serial of group %02d", g.Serial, prev))
		}
		groupBySerial[g.Serial] = nn
		p.cfg.Groups = append(p.cfg.Groups, g)
	}
	return nil
}

// rawGroups collects the VirtualTokenNN keys by group index NN, warning
// about (and ignoring) keys whose index is not two digits.
func (p *parser) rawGroups() map[int]*groupKeys {
	s := p.section(secVirtual)
	raw := map[int]*groupKeys{}
	if s == nil {
		return raw
	}
	for _, k := range s.Keys() {
		digits, field, ok := splitGroupKey(strings.ToLower(k.Name()))
		if !ok {
			continue
		}
		if len(digits) != 2 {
			p.warn(secVirtual, "VirtualToken"+digits+groupFields[field],
				"group index %q is not two digits (NN is 00..99); key ignored", digits)
			continue
		}
		nn := int(digits[0]-'0')*10 + int(digits[1]-'0')
		g := raw[nn]
		if g == nil {
			g = &groupKeys{}
			raw[nn] = g
		}
		v := strings.TrimSpace(k.Value())
		switch field {
		case "label":
			g.label, g.hasLabel = v, true
		case "sn":
			g.sn, g.hasSN = v, true
		case "members":
			g.members, g.hasMemb = v, true
		}
	}
	return raw
}

func (p *parser) parseGroup(nn int, k *groupKeys) (Group, error) {
	g := Group{Index: nn, Label: k.label}
	snKey, membKey, labelKey := groupKeyName(nn, "SN"), groupKeyName(nn, "Members"), groupKeyName(nn, "Label")
	if !k.hasSN {
		return g, p.keyError(secVirtual, snKey, errors.New("missing: the group has no serial number"))
	}
	if !k.hasMemb {
		return g, p.keyError(secVirtual, membKey, errors.New("missing: the group has no members"))
	}
	sn, err := ParseSerial(k.sn)
	if err != nil {
		return g, p.keyError(secVirtual, snKey, fmt.Errorf("serial %q: %w", k.sn, err))
	}
	g.Serial = sn
	if g.Label == "" {
		p.warn(secVirtual, labelKey, "group %02d (serial %d) has no label", nn, sn)
	}

	items := strings.Split(k.members, ",")
	if len(items) > MaxMembers {
		return g, p.keyError(secVirtual, membKey,
			fmt.Errorf("group %q has %d members, at most %d are supported", g.Label, len(items), MaxMembers))
	}
	seen := map[uint64]string{}
	for i, item := range items {
		text := strings.TrimSpace(item)
		if text == "" {
			return g, p.keyError(secVirtual, membKey, fmt.Errorf("member %d of %d is empty", i+1, len(items)))
		}
		ms, err := ParseSerial(text)
		if err != nil {
			return g, p.keyError(secVirtual, membKey, fmt.Errorf("member %q: %w", text, err))
		}
		if prev, dup := seen[ms]; dup {
			return g, p.keyError(secVirtual, membKey, fmt.Errorf("member %q is listed twice (also as %q)", text, prev))
		}
		seen[ms] = text
		g.Members = append(g.Members, Member{Serial: ms, SerialText: text})
	}
	return g, nil
}

func (p *parser) parseHAConfiguration() {
	s := p.section(secHA)
	p.cfg.StatusTimeout = DefaultStatusTimeout
	if v, ok := value(s, "statusTimeout"); ok {
		d, w := ParseStatusTimeout(v)
		p.cfg.StatusTimeout = d
		if w != "" {
			p.warn(secHA, "statusTimeout", "%s", w)
		}
	}

	if v, ok := value(s, "haExtMonitorSession"); ok {
		switch {
		case strings.EqualFold(v, "disabled"):
			p.cfg.NoSession = true
		case !strings.EqualFold(v, "enabled"):
			p.warn(secHA, "haExtMonitorSession", "%q is neither enabled nor disabled; using enabled", v)
		}
	}

	log := HALog{MaxBytes: defaultLogLen}
	if v, _ := value(s, "haLogStatus"); strings.EqualFold(v, "enabled") {
		log.Enabled = true
	}
	if v, _ := value(s, "haLogToStdout"); strings.EqualFold(v, "enabled") {
		log.ToStdout = true
	}
	log.Dir, _ = value(s, "haLogPath")
	if log.Enabled && log.Dir == "" {
		p.warn(secHA, "haLogPath", "haLogStatus is enabled but haLogPath is not set; HA logging to a file is disabled")
		log.Enabled = false
	}
	if v, ok := value(s, "logLen"); ok {
		n, err := strconv.ParseInt(v, 10, 64)
		switch {
		case err != nil:
			p.warn(secHA, "logLen", "%q is not a whole number of bytes; using the default of %d", v, defaultLogLen)
		case n < 0:
			p.warn(secHA, "logLen", "%q is negative; using the default of %d", v, defaultLogLen)
		case n > 0:
			log.MaxBytes = n
		}
	}
	p.cfg.HALog = log
}

func (p *parser) parseEndpoints() error {
	s := p.section(secEndpoints)
	if s == nil {
		return nil
	}
	bySerial := map[uint64]string{}
	for _, k := range s.Keys() {
		key := k.Name()
		serial, err := ParseSerial(key)
		if err != nil {
			return p.keyError(secEndpoints, key, fmt.Errorf("member serial %q: %w", key, err))
		}
		if prev, dup := bySerial[serial]; dup {
			return p.keyError(secEndpoints, key, fmt.Errorf("member serial %q is also given as %q", key, prev))
		}
		bySerial[serial] = key
		ep, err := ParseEndpoint(k.Value())
		if err != nil {
			return p.keyError(secEndpoints, key, err)
		}
		found := false
		for gi := range p.cfg.Groups {
			for mi := range p.cfg.Groups[gi].Members {
				m := &p.cfg.Groups[gi].Members[mi]
				if m.Serial == serial {
					e := ep
					m.Endpoint = &e
					found = true
				}
			}
		}
		if !found {
			p.warn(secEndpoints, key, "serial %s is not a member of any HA group; endpoint ignored", key)
		}
	}
	return nil
}
