//! Where the 2-D grids lie among the tokens (SPEC section 3) and the query grids that a keep
//! fraction makes of them (SPEC section 4, step 2).

use crate::error::{Error, Result};

/// An `height x width` grid of tokens, row-major, rows `stride` tokens apart: token `(r, c)`
/// is `offset + r * stride + c` (SPEC section 3). With `stride > width`, the `stride - width`
/// tokens after each row are not in the grid (LLaVA-NeXT's newline tokens, or rows of
/// another grid).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// First token of the grid.
    pub offset: usize,
    /// Rows of the grid.
    pub height: usize,
    /// Columns of the grid.
    pub width: usize,
    /// Tokens from the start of one row to the start of the next (`>= width`).
    pub stride: usize,
}

impl Grid {
    /// A contiguous grid: `height * width` tokens from `offset`.
    pub fn new(offset: usize, height: usize, width: usize) -> Self {
        Grid::strided(offset, height, width, width)
    }

    /// A grid whose rows start `stride` tokens apart.
    pub fn strided(offset: usize, height: usize, width: usize, stride: usize) -> Self {
        Grid {
            offset,
            height,
            width,
            stride,
        }
    }

    /// Number of tokens in the grid (saturating: an unchecked grid never overflows).
    pub fn len(&self) -> usize {
        self.height.saturating_mul(self.width)
    }

    /// Whether the grid holds no token (never true for a validated layout).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether rows follow each other with no token between them.
    pub fn is_contiguous(&self) -> bool {
        self.stride == self.width
    }

    /// The token at row `row` and column `column`.
    pub fn token(&self, row: usize, column: usize) -> usize {
        self.offset + row * self.stride + column
    }

    /// The token of cell `cell` (row-major: row `cell / width`, column `cell % width`).
    pub fn token_of_cell(&self, cell: usize) -> usize {
        self.token(cell / self.width, cell % self.width)
    }

    /// The grid's tokens, row by row.
    pub fn tokens(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.len()).map(|cell| self.token_of_cell(cell))
    }

    /// One past the last token of the grid (its span `offset..end` may hold other tokens
    /// between rows).
    /// Saturating: a grid that would end past `usize::MAX` (only an unchecked one, as parsed
    /// from a flag) ends there, and `Layout::new` refuses it.
    pub fn end(&self) -> usize {
        match self.height {
            0 => self.offset,
            h => self
                .offset
                .saturating_add((h - 1).saturating_mul(self.stride))
                .saturating_add(self.width),
        }
    }

    /// The row and column of `token`, if it is in the grid.
    pub fn cell_of(&self, token: usize) -> Option<(usize, usize)> {
        if token < self.offset || token >= self.end() {
            return None;
        }
        let local = token - self.offset;
        let (row, column) = (local / self.stride, local % self.stride);
        (column < self.width).then_some((row, column))
    }

    /// Whether `token` is in the grid.
    pub fn contains(&self, token: usize) -> bool {
        self.cell_of(token).is_some()
    }

    /// The keys of this grid as a `Keys` pattern.
    pub fn keys(&self) -> Keys {
        Keys {
            start: self.offset,
            end: self.end(),
            stride: self.stride,
            width: self.width,
        }
    }
}

impl std::fmt::Display for Grid {
    /// As a `--grid` flag: `HxW@OFFSET`, with `/STRIDE` when the rows are not contiguous.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}x{}@{}", self.height, self.width, self.offset)?;
        if !self.is_contiguous() {
            write!(f, "/{}", self.stride)?;
        }
        Ok(())
    }
}

/// The keys a query's softmax runs over (SPEC section 4, step 5): the tokens `j` of
/// `start..end` with `(j - start) % stride < width`; all of `start..end` when
/// `stride == width`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keys {
    /// First token of the span.
    pub start: usize,
    /// One past the last token of the span.
    pub end: usize,
    /// Tokens between the starts of two rows of keys.
    pub stride: usize,
    /// Keys at the start of each row.
    pub width: usize,
}

impl Keys {
    /// Every token of `0..tokens`.
    pub fn all(tokens: usize) -> Self {
        Keys {
            start: 0,
            end: tokens,
            stride: tokens.max(1),
            width: tokens.max(1),
        }
    }

    /// The span `start..end` that holds every key (and, with gaps, other tokens too).
    pub fn span(&self) -> std::ops::Range<usize> {
        self.start..self.end
    }

    /// Whether `token` is a key.
    pub fn contains(&self, token: usize) -> bool {
        self.span().contains(&token) && (token - self.start) % self.stride < self.width
    }

    /// The keys, in token order.
    pub fn iter(&self) -> impl Iterator<Item = usize> + '_ {
        self.span().filter(|&token| self.contains(token))
    }

    /// Whether every token of the span is a key.
    pub fn is_contiguous(&self) -> bool {
        self.width >= self.stride
    }
}

/// The `n` tokens of an image and the grids among them. Tokens in no grid are loose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    tokens: usize,
    grids: Vec<Grid>,
}

/// Refuses features of `n` tokens for a layout that describes `described` (also a preset's
/// count, checked before its layout is built).
pub(crate) fn check_token_count(described: usize, n: usize) -> Result<()> {
    if described != n {
        return Err(Error::InvalidArgument(format!(
            "the layout describes n = {described} tokens; the features hold n = {n}"
        )));
    }
    Ok(())
}

impl Layout {
    /// A layout of `tokens` tokens with the given grids, checked: every grid is non-empty,
    /// inside `0..tokens`, and no two overlap. At least one grid is needed to make queries.
    pub fn new(tokens: usize, grids: Vec<Grid>) -> Result<Self> {
        if tokens == 0 {
            return Err(Error::InvalidArgument(
                "the features hold 0 tokens; expected at least 1".into(),
            ));
        }
        if grids.is_empty() {
            return Err(Error::InvalidArgument(
                "the layout has no grid; expected at least one grid (pass --grid HxW)".into(),
            ));
        }
        for grid in &grids {
            if grid.height == 0 || grid.width == 0 {
                return Err(Error::InvalidArgument(format!(
                    "grid {grid} is empty; expected a height and width of at least 1"
                )));
            }
            if grid.stride < grid.width {
                return Err(Error::InvalidArgument(format!(
                    "grid {}x{}@{}/{} has a row stride of {} below its width {}; expected a \
                     stride of at least the width",
                    grid.height, grid.width, grid.offset, grid.stride, grid.stride, grid.width
                )));
            }
            let end = (grid.height - 1)
                .checked_mul(grid.stride)
                .and_then(|rows| rows.checked_add(grid.width))
                .and_then(|span| span.checked_add(grid.offset));
            if end.is_none_or(|end| end > tokens) {
                return Err(Error::InvalidArgument(format!(
                    "grid {grid} ends past the last token; expected it inside 0..{tokens}"
                )));
            }
        }
        // Token by token: strided grids may interleave their rows without sharing a token.
        let mut owner: Vec<u32> = vec![u32::MAX; tokens];
        for (index, grid) in grids.iter().enumerate() {
            for token in grid.tokens() {
                if owner[token] != u32::MAX {
                    let other = grids[owner[token] as usize];
                    return Err(Error::InvalidArgument(format!(
                        "grids {other} and {grid} overlap at token {token}; expected disjoint \
                         grids"
                    )));
                }
                owner[token] = index as u32;
            }
        }
        Ok(Layout { tokens, grids })
    }

    /// The default layout: one square grid when `tokens` is a perfect square, else an error
    /// that says how to pass a layout.
    pub fn square(tokens: usize) -> Result<Self> {
        let side = (tokens as f64).sqrt().round() as usize;
        if side * side != tokens || tokens == 0 {
            return Err(Error::InvalidArgument(format!(
                "{tokens} tokens is not a perfect square and no layout was given; \
                 pass one with --grid HxW[@OFFSET] or a `grids` metadata entry in the input"
            )));
        }
        Layout::new(tokens, vec![Grid::new(0, side, side)])
    }

    /// Number of tokens `n`.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Refuses features of another number of tokens than the layout describes.
    pub fn check_tokens(&self, n: usize) -> Result<()> {
        check_token_count(self.tokens, n)
    }

    /// The grids, in the order given.
    pub fn grids(&self) -> &[Grid] {
        &self.grids
    }

    /// The grid that holds `token`, if any (loose tokens have none).
    pub fn grid_of(&self, token: usize) -> Option<&Grid> {
        self.grids.iter().find(|grid| grid.contains(token))
    }

    /// The query grids for a keep fraction (SPEC section 4, step 2).
    pub fn queries(&self, keep: Keep) -> Queries {
        let mut grids = Vec::with_capacity(self.grids.len());
        let mut query_offset = 0;
        for grid in &self.grids {
            let (height, width) = query_shape(grid.height, grid.width, keep.0);
            grids.push(QueryGrid {
                query_offset,
                height,
                width,
                grid: *grid,
            });
            query_offset += height * width;
        }
        Queries {
            grids,
            count: query_offset,
        }
    }

    /// The layout as the JSON of the `grids` metadata: `[[offset, h, w], ...]`, with a fourth
    /// entry, the stride, for a grid whose rows are not contiguous.
    pub fn to_json(&self) -> String {
        let items: Vec<String> = self
            .grids
            .iter()
            .map(|g| match g.is_contiguous() {
                true => format!("[{},{},{}]", g.offset, g.height, g.width),
                false => format!("[{},{},{},{}]", g.offset, g.height, g.width, g.stride),
            })
            .collect();
        format!("[{}]", items.join(","))
    }
}

/// `hq x wq` for an `h x w` grid at keep `k` (SPEC section 4, step 2).
fn query_shape(height: usize, width: usize, keep: f64) -> (usize, usize) {
    // `f64::round` rounds half away from zero, as the spec asks.
    let scale = |side: usize, factor: f64| ((side as f64 * factor).round() as usize).clamp(1, side);
    if height > 1 && width > 1 {
        (scale(height, keep.sqrt()), scale(width, keep.sqrt()))
    } else if height == 1 {
        (1, scale(width, keep))
    } else {
        (scale(height, keep), 1)
    }
}

fn triples_json(triples: impl Iterator<Item = [usize; 3]>) -> String {
    let items: Vec<String> = triples.map(|[a, b, c]| format!("[{a},{b},{c}]")).collect();
    format!("[{}]", items.join(","))
}

/// The queries one grid contributes: an `height x width` grid of pooled tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueryGrid {
    /// Index of the grid's first query among all `m` queries.
    pub query_offset: usize,
    /// Rows of queries `hq`.
    pub height: usize,
    /// Columns of queries `wq`.
    pub width: usize,
    /// The token grid these queries pool.
    pub grid: Grid,
}

impl QueryGrid {
    /// Number of queries of this grid.
    pub fn len(&self) -> usize {
        self.height * self.width
    }

    /// Whether the grid makes no query (never true).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The input rows (or columns) that query row `index` of `out` averages over `input`
    /// (SPEC section 4, step 3): `floor(i*in/out) .. ceil((i+1)*in/out)`.
    pub fn window(index: usize, input: usize, out: usize) -> std::ops::Range<usize> {
        (index * input / out)..((index + 1) * input).div_ceil(out)
    }
}

/// All queries of a layout at one keep fraction, grid by grid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Queries {
    /// One entry per grid of the layout, in its order.
    pub grids: Vec<QueryGrid>,
    /// Total number of queries `m`.
    pub count: usize,
}

impl Queries {
    /// The `query_grids` output metadata: `[[query_offset, hq, wq], ...]`.
    pub fn to_json(&self) -> String {
        triples_json(
            self.grids
                .iter()
                .map(|g| [g.query_offset, g.height, g.width]),
        )
    }

    /// The key tokens that query `query` may attend to under `scope`.
    pub fn keys(&self, query: usize, scope: Scope, tokens: usize) -> Keys {
        match scope {
            Scope::Image => Keys::all(tokens),
            Scope::Grid => {
                let grid = self
                    .grids
                    .iter()
                    .find(|g| (g.query_offset..g.query_offset + g.len()).contains(&query))
                    .expect("query index below the query count");
                grid.grid.keys()
            }
        }
    }
}

/// The keep fraction `k` in `(0, 1]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Keep(f64);

impl Keep {
    /// A checked keep fraction.
    pub fn new(keep: f64) -> Result<Self> {
        if keep.is_finite() && keep > 0.0 && keep <= 1.0 {
            Ok(Keep(keep))
        } else {
            Err(Error::InvalidArgument(format!(
                "keep {} is out of range; expected a fraction in (0, 1]",
                short_number(keep)
            )))
        }
    }

    /// The fraction as a number.
    pub fn value(self) -> f64 {
        self.0
    }
}

impl std::fmt::Display for Keep {
    /// The fraction as given, in the shortest form that reads back to it; with an exponent
    /// when the plain form would be long (`1e-300`, not 300 zeros).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&short_number(self.0))
    }
}

/// `value` in the shortest form that reads back to it; with an exponent when the plain form
/// would be long.
pub(crate) fn short_number(value: f64) -> String {
    let plain = value.to_string();
    if plain.len() > 20 {
        format!("{value:e}")
    } else {
        plain
    }
}

impl Default for Keep {
    /// The paper's 90% reduction.
    fn default() -> Self {
        Keep(0.1)
    }
}

/// Which keys a query's softmax runs over (SPEC section 4, step 5).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Scope {
    /// Every token of the image.
    #[default]
    Image,
    /// Only the tokens of the query's own grid.
    Grid,
}

impl Scope {
    /// The name used on the command line and in the output metadata.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Image => "image",
            Scope::Grid => "grid",
        }
    }
}

/// Parses one `--grid HxW[@OFFSET][/STRIDE]`; a missing offset starts at `next_offset`, a
/// missing stride is the width.
pub fn parse_grid_flag(text: &str, next_offset: usize) -> Result<Grid> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--grid {} is not a grid; expected HxW, HxW@OFFSET or HxW@OFFSET/STRIDE, such as \
             24x24@0 or 32x48@576/49",
            crate::error::quoted(text)
        ))
    };
    let number = |text: &str| text.trim().parse::<usize>().map_err(|_| bad());
    let (rest, stride) = match text.split_once('/') {
        Some((rest, stride)) => (rest, Some(number(stride)?)),
        None => (text, None),
    };
    let (shape, offset) = match rest.split_once('@') {
        Some((shape, offset)) => (shape, number(offset)?),
        None => (rest, next_offset),
    };
    let (height, width) = shape.split_once(['x', 'X']).ok_or_else(bad)?;
    let (height, width) = (number(height)?, number(width)?);
    Ok(Grid::strided(
        offset,
        height,
        width,
        stride.unwrap_or(width),
    ))
}

/// Parses all `--grid` flags in order, each missing offset following the previous grid.
pub fn parse_grid_flags(flags: &[String]) -> Result<Vec<Grid>> {
    let mut grids: Vec<Grid> = Vec::with_capacity(flags.len());
    for flag in flags {
        let next = grids.last().map_or(0, |g| g.end());
        grids.push(parse_grid_flag(flag, next)?);
    }
    Ok(grids)
}

/// Parses the `grids` metadata of an input file: a JSON list of `[offset, h, w]` or
/// `[offset, h, w, stride]` entries.
pub fn parse_grids_json(text: &str) -> Result<Vec<Grid>> {
    let bad = |why: &str| {
        Error::Format(format!(
            "input metadata grids = {} is not valid: {why}; expected a JSON list of \
             [offset, h, w] or [offset, h, w, stride] entries such as [[0,24,24]]",
            crate::error::quoted(text)
        ))
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let items = value.as_array().ok_or_else(|| bad("not a list"))?;
    items
        .iter()
        .map(|item| {
            let entry = item
                .as_array()
                .filter(|t| t.len() == 3 || t.len() == 4)
                .ok_or_else(|| bad("an entry is not [offset, h, w] or [offset, h, w, stride]"))?;
            let number = |v: &serde_json::Value| {
                v.as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| bad("an entry holds a value that is not a non-negative integer"))
            };
            let width = number(&entry[2])?;
            let stride = match entry.get(3) {
                Some(stride) => number(stride)?,
                None => width,
            };
            Ok(Grid::strided(
                number(&entry[0])?,
                number(&entry[1])?,
                width,
                stride,
            ))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(offset: usize, height: usize, width: usize) -> Grid {
        Grid::new(offset, height, width)
    }

    #[test]
    fn query_shapes_follow_the_spec() {
        // 24 * sqrt(0.1) = 7.589 -> 8
        assert_eq!(query_shape(24, 24, 0.1), (8, 8));
        // 48 * sqrt(0.1) = 15.18 -> 15
        assert_eq!(query_shape(48, 48, 0.1), (15, 15));
        assert_eq!(query_shape(24, 24, 1.0), (24, 24));
        // a 1-row grid scales its long side by k alone: 10 * 0.25 = 2.5 -> 3 (half away from zero)
        assert_eq!(query_shape(1, 10, 0.25), (1, 3));
        assert_eq!(query_shape(10, 1, 0.25), (3, 1));
        assert_eq!(query_shape(1, 1, 0.01), (1, 1));
        // tiny keep clamps to one query row and column
        assert_eq!(query_shape(5, 7, 0.0001), (1, 1));
        // 2 * sqrt(0.5625) = 1.5 -> 2
        assert_eq!(query_shape(2, 2, 0.5625), (2, 2));
    }

    #[test]
    fn windows_cover_the_grid() {
        assert_eq!(QueryGrid::window(0, 5, 2), 0..3);
        assert_eq!(QueryGrid::window(1, 5, 2), 2..5);
        assert_eq!(QueryGrid::window(0, 24, 8), 0..3);
        assert_eq!(QueryGrid::window(2, 7, 3), 4..7);
    }

    #[test]
    fn llava_next_layout_counts_queries() {
        let layout = Layout::new(2928, vec![grid(0, 24, 24), grid(576, 48, 48)]).unwrap();
        let queries = layout.queries(Keep::new(0.1).unwrap());
        assert_eq!(queries.count, 64 + 225);
        assert_eq!(queries.to_json(), "[[0,8,8],[64,15,15]]");
        assert_eq!(queries.keys(70, Scope::Grid, 2928).span(), 576..2880);
        assert!(queries.keys(70, Scope::Grid, 2928).is_contiguous());
        assert_eq!(queries.keys(70, Scope::Image, 2928).span(), 0..2928);
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert!(Layout::new(10, vec![grid(0, 2, 3), grid(5, 1, 2)]).is_err());
        assert!(Layout::new(10, vec![grid(5, 2, 3)]).is_err());
        assert!(Layout::new(10, vec![grid(0, 0, 3)]).is_err());
        assert!(Layout::new(10, vec![grid(usize::MAX, 2, 2)]).is_err());
        assert!(Layout::square(10).is_err());
        assert_eq!(Layout::square(9).unwrap().grids(), &[grid(0, 3, 3)]);
    }

    #[test]
    fn grid_flags_chain_offsets() {
        let flags = ["24x24".to_string(), "32x48".into(), "2x2@4000".into()];
        assert_eq!(
            parse_grid_flags(&flags).unwrap(),
            vec![grid(0, 24, 24), grid(576, 32, 48), grid(4000, 2, 2)]
        );
        assert!(parse_grid_flag("24by24", 0).is_err());
        // Found by the fuzzer: a grid too large for any layout, then one that follows it.
        let huge = ["2222222222222222223x24".to_string(), "5".into()];
        assert!(
            parse_grid_flags(&huge).is_err()
                || Layout::new(10, parse_grid_flags(&huge).unwrap()).is_err()
        );
        assert!(parse_grid_flag("24x", 0).is_err());
        assert_eq!(
            parse_grids_json("[[0,24,24],[576,32,48]]").unwrap(),
            vec![grid(0, 24, 24), grid(576, 32, 48)]
        );
        assert!(parse_grids_json("[[0,24]]").is_err());
        assert!(parse_grids_json("[[0,-1,2]]").is_err());
        assert!(parse_grids_json("{").is_err());
    }
}
