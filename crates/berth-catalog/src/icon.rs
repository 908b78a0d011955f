//! Monogram icons drawn by Berth itself, so the catalog never points a
//! customer's page at a third-party host.

use crate::Integration;

/// A 64x64 SVG: the integration's colour with one or two initials.
pub fn icon_svg(integration: &Integration) -> String {
    let initials: String = integration
        .name
        .split(|c: char| c.is_whitespace() || c == '.' || c == '(')
        .filter_map(|w| w.chars().next())
        .filter(|c| c.is_alphanumeric())
        .take(2)
        .collect::<String>()
        .to_uppercase();
    let initials = if initials.is_empty() {
        "?".to_string()
    } else {
        initials
    };
    // Dark text on light brand colours, white otherwise (perceived luminance).
    let rgb = u32::from_str_radix(&integration.color[1..], 16).unwrap_or(0x334155);
    let (r, g, b) = ((rgb >> 16) & 0xff, (rgb >> 8) & 0xff, rgb & 0xff);
    let luminance = (299 * r + 587 * g + 114 * b) / 1000;
    let fg = if luminance > 160 {
        "#111827"
    } else {
        "#FFFFFF"
    };
    let size = if initials.chars().count() > 1 { 26 } else { 32 };
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="64" height="64" viewBox="0 0 64 64" role="img" aria-label="{name}"><title>{name}</title><rect width="64" height="64" rx="14" fill="{bg}"/><text x="32" y="33" text-anchor="middle" dominant-baseline="central" font-family="system-ui,-apple-system,Segoe UI,Roboto,sans-serif" font-size="{size}" font-weight="700" fill="{fg}">{initials}</text></svg>"##,
        name = xml_escape(&integration.name),
        bg = integration.color,
        initials = xml_escape(&initials),
    )
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use crate::Catalog;

    #[test]
    fn icons_are_self_contained_svg() {
        let c = Catalog::builtin();
        for i in c.all() {
            let svg = super::icon_svg(i);
            assert!(svg.starts_with("<svg"));
            assert!(!svg.contains("href"), "{}", i.id);
        }
        assert!(super::icon_svg(c.get("hubspot").unwrap()).contains(">H<"));
        assert!(super::icon_svg(c.get("salesforce").unwrap()).contains(">S<"));
    }
}
