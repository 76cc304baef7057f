//! Where the 2-D grids lie among the tokens (SPEC section 3) and the query grids that a keep
//! fraction makes of them (SPEC section 4, step 2).

use crate::error::{Error, Result};

/// An `height x width` grid of tokens `offset .. offset + height * width`, row-major.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Grid {
    /// First token of the grid.
    pub offset: usize,
    /// Rows of the grid.
    pub height: usize,
    /// Columns of the grid.
    pub width: usize,
}

impl Grid {
    /// Number of tokens in the grid.
    pub fn len(&self) -> usize {
        self.height * self.width
    }

    /// Whether the grid holds no token (never true for a validated layout).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One past the last token of the grid.
    pub fn end(&self) -> usize {
        self.offset + self.len()
    }
}

/// The `n` tokens of an image and the grids among them. Tokens in no grid are loose.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    tokens: usize,
    grids: Vec<Grid>,
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
                    "grid {}x{}@{} is empty; expected a height and width of at least 1",
                    grid.height, grid.width, grid.offset
                )));
            }
            let end = grid
                .height
                .checked_mul(grid.width)
                .and_then(|len| len.checked_add(grid.offset));
            if end.is_none_or(|end| end > tokens) {
                return Err(Error::InvalidArgument(format!(
                    "grid {}x{}@{} ends past the last token; expected it inside 0..{tokens}",
                    grid.height, grid.width, grid.offset
                )));
            }
        }
        let mut sorted = grids.clone();
        sorted.sort_by_key(|grid| grid.offset);
        for pair in sorted.windows(2) {
            if pair[0].end() > pair[1].offset {
                return Err(Error::InvalidArgument(format!(
                    "grids {}x{}@{} and {}x{}@{} overlap; expected disjoint grids",
                    pair[0].height,
                    pair[0].width,
                    pair[0].offset,
                    pair[1].height,
                    pair[1].width,
                    pair[1].offset
                )));
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
        Layout::new(
            tokens,
            vec![Grid {
                offset: 0,
                height: side,
                width: side,
            }],
        )
    }

    /// Number of tokens `n`.
    pub fn tokens(&self) -> usize {
        self.tokens
    }

    /// Refuses features of another number of tokens than the layout describes.
    pub fn check_tokens(&self, n: usize) -> Result<()> {
        if self.tokens != n {
            return Err(Error::InvalidArgument(format!(
                "the layout describes {} tokens; the features hold n = {n}",
                self.tokens
            )));
        }
        Ok(())
    }

    /// The grids, in the order given.
    pub fn grids(&self) -> &[Grid] {
        &self.grids
    }

    /// The grid that holds `token`, if any (loose tokens have none).
    pub fn grid_of(&self, token: usize) -> Option<&Grid> {
        self.grids
            .iter()
            .find(|grid| (grid.offset..grid.end()).contains(&token))
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

    /// The layout as the JSON of the `grids` metadata: `[[offset, h, w], ...]`.
    pub fn to_json(&self) -> String {
        triples_json(self.grids.iter().map(|g| [g.offset, g.height, g.width]))
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

    /// The key tokens that query `query` may attend to under `scope`, as a range of tokens.
    pub fn key_range(&self, query: usize, scope: Scope, tokens: usize) -> std::ops::Range<usize> {
        match scope {
            Scope::Image => 0..tokens,
            Scope::Grid => {
                let grid = self
                    .grids
                    .iter()
                    .find(|g| (g.query_offset..g.query_offset + g.len()).contains(&query))
                    .expect("query index below the query count");
                grid.grid.offset..grid.grid.end()
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
                "keep {keep} is out of range; expected a fraction in (0, 1]"
            )))
        }
    }

    /// The fraction as a number.
    pub fn value(self) -> f64 {
        self.0
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

/// Parses one `--grid HxW[@OFFSET]`; a missing offset starts at `next_offset`.
pub fn parse_grid_flag(text: &str, next_offset: usize) -> Result<Grid> {
    let bad = || {
        Error::InvalidArgument(format!(
            "--grid {text:?} is not a grid; expected HxW or HxW@OFFSET, such as 24x24@0"
        ))
    };
    let (shape, offset) = match text.split_once('@') {
        Some((shape, offset)) => (shape, offset.trim().parse().map_err(|_| bad())?),
        None => (text, next_offset),
    };
    let (height, width) = shape.split_once(['x', 'X']).ok_or_else(bad)?;
    Ok(Grid {
        offset,
        height: height.trim().parse().map_err(|_| bad())?,
        width: width.trim().parse().map_err(|_| bad())?,
    })
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

/// Parses the `grids` metadata of an input file: a JSON list of `[offset, h, w]` triples.
pub fn parse_grids_json(text: &str) -> Result<Vec<Grid>> {
    let bad = |why: &str| {
        Error::Format(format!(
            "input metadata grids = {text:?} is not valid: {why}; expected a JSON list of \
             [offset, h, w] triples such as [[0,24,24]]"
        ))
    };
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
    let items = value.as_array().ok_or_else(|| bad("not a list"))?;
    items
        .iter()
        .map(|item| {
            let triple = item
                .as_array()
                .filter(|t| t.len() == 3)
                .ok_or_else(|| bad("an entry is not a triple"))?;
            let number = |v: &serde_json::Value| {
                v.as_u64()
                    .and_then(|v| usize::try_from(v).ok())
                    .ok_or_else(|| bad("an entry holds a value that is not a non-negative integer"))
            };
            Ok(Grid {
                offset: number(&triple[0])?,
                height: number(&triple[1])?,
                width: number(&triple[2])?,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grid(offset: usize, height: usize, width: usize) -> Grid {
        Grid {
            offset,
            height,
            width,
        }
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
        assert_eq!(queries.key_range(70, Scope::Grid, 2928), 576..2880);
        assert_eq!(queries.key_range(70, Scope::Image, 2928), 0..2928);
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
