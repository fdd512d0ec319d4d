"""The words the semantic cache's text signals read: units and currencies, numbers spelled out, dates,
opposites, names' titles, stopwords. Plain data, kept apart from the reading (``text_signals``)."""

from __future__ import annotations


def words(text: str) -> frozenset[str]:
    return frozenset(text.split())


UNIT_NAMES = {
    "inr": "rs inr rupee rupees ₹",
    "usd": "usd dollar dollars $",
    "eur": "eur euro euros €",
    "gbp": "gbp £",
    "jpy": "jpy yen",
    "cny": "cny yuan rmb",
    "kb": "kb kilobyte kilobytes",
    "mb": "mb megabyte megabytes",
    "gb": "gb gigabyte gigabytes",
    "tb": "tb terabyte terabytes",
    "kg": "kg kgs kilogram kilograms kilo kilos",
    "km": "km kms kilometer kilometers kilometre kilometres",
    "mile": "mile miles",
    "ghz": "ghz",
    "mhz": "mhz",
    "mph": "mph",
    "kmph": "kmph",
    # Quantities a dose, a recipe, a length or a duration is given in: "10 mg" is not "10 g", "6 weeks" not
    # "6 months". One-letter units ("g", "l", "m") and English words ("in", "min", "won") are left out.
    "mg": "mg milligram milligrams",
    "mcg": "mcg microgram micrograms",
    "gram": "gram grams",
    "ml": "ml milliliter milliliters millilitre millilitres",
    "liter": "liter liters litre litres",
    "oz": "oz ounce ounces",
    "cup": "cup cups",
    "gallon": "gallon gallons",
    "cm": "cm centimeter centimeters centimetre centimetres",
    "mm": "mm millimeter millimeters millimetre millimetres",
    "meter": "meter meters metre metres",
    "ft": "ft foot feet",
    "inch": "inch inches",
    "lb": "lb lbs pound pounds",
    "celsius": "celsius",
    "fahrenheit": "fahrenheit",
    "kcal": "kcal calorie calories",
    "sec": "sec secs seconds",
    "minute": "minute minutes mins",
    "hour": "hour hours hr hrs",
    "week": "week weeks",
    "month": "month months",
    "year": "year years yr yrs",
    "aud": "aud",
    "cad": "cad",
    "chf": "chf franc francs",
    "sgd": "sgd",
    "hkd": "hkd",
    "nzd": "nzd",
    "mxn": "mxn peso pesos",
    "brl": "brl reais",
    "krw": "krw",
    "rub": "ruble rubles rouble roubles",
    "zar": "zar rand",
    "sek": "sek krona kronor",
    "idr": "idr rupiah",
    "thb": "thb baht",
    "myr": "myr ringgit",
    "aed": "aed dirham dirhams",
    "sar": "sar riyal riyals",
    "try": "lira",
}
UNITS = {name: unit for unit, names in UNIT_NAMES.items() for name in names.split()}
"""Currencies and units, each under one name: "Rs" and "rupees" agree, "GB" and "TB" do not (the units guard)."""

STOPWORDS = words(
    "a an the and or but if then so of to in on at by for from with about as into over under up down out off "
    "is are was were be been being am do does did doing have has had having i me my mine we us our you your he "
    "him his she her it its they them their this that these those there here what which who whom whose when where "
    "why how can could will would shall should may might must some any all each every other such own same than too "
    "very just also only really get got one ones thing things way ways much many more most someone something "
    "anyone anything good best better use using used make made know need want like s t"
)

NUMBER_SUFFIXES = words("k st nd rd th s")
TITLES = words(
    "president prime minister pm mr mrs ms miss dr sir dame king queen prince princess lord lady saint st pope "
    "senator governor general ceo chairman chancellor premier emperor sultan sheikh"
)
"""Words a name may carry or drop without naming someone else: "President Trump", "PM Modi"."""
QUESTION_WORDS = ("how", "why", "what", "when", "where", "who", "which", "whose", "whom")
NEGATIONS = words("not no never none nobody nothing neither nor without unable")
NUMBER_NAMES = (
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen"
)
ORDINALS = (
    "zeroth first second third fourth fifth sixth seventh eighth ninth tenth eleventh twelfth thirteenth "
    "fourteenth fifteenth sixteenth seventeenth eighteenth nineteenth"
)
TENS = "twenty thirty forty fifty sixty seventy eighty ninety"
NUMBER_WORDS = (
    {word: str(value) for value, word in enumerate(NUMBER_NAMES.split())}
    | {word: str(value) for value, word in enumerate(ORDINALS.split()) if value}
    | {word: str(20 + 10 * i) for i, word in enumerate(TENS.split())}
    | {word[:-1] + "ieth": str(20 + 10 * i) for i, word in enumerate(TENS.split())}  # twentieth, thirtieth ...
    | {word[:-1] + "ies": str(20 + 10 * i) + "s" for i, word in enumerate(TENS.split())}  # the twenties, sixties
    | {
        "dozen": "12",
        "hundred": "100",
        "thousand": "1000",
        "million": "1000000",
        "billion": "1000000000",
        "trillion": "1000000000000",
        "crore": "10000000",
    }
)
BEFORE_PRONOUN_ONE = words("can could should would will must may might does do did shall")
TOPS = words("most best top worst few")
ROOT_ENDINGS = words("n an ian ans ians ns ese ic s es i is ish y ing ed er ers")
MONTH_NAMES = "january february march april june july august september october november december"
MONTHS = {name: name[:3] for name in MONTH_NAMES.split()} | {name[:3]: name[:3] for name in MONTH_NAMES.split()}
""""may" and "march" are verbs too: "may" only counts next to a number (see ``_dates``); "mar" is not a month."""
DAYS = words(
    "monday tuesday wednesday thursday friday saturday sunday today tomorrow yesterday tonight weekend "
    "summer winter autumn christmas easter thanksgiving halloween diwali ramadan hanukkah"
)
RELATIVE = words("this next last coming previous")
PERIODS = words("week weekend month year quarter season night morning evening summer winter autumn decade century")
ANTONYMS = (
    "enable disable|allow deny|allow block|allow forbid|increase decrease|increase reduce|add remove|add delete|"
    "start stop|open close|buy sell|lock unlock|upload download|import export|before after|maximum minimum|max min|"
    "higher lower|more less|best worst|pro con|advantage disadvantage|true false|login logout|win lose|"
    "accept reject|connect disconnect|show hide|send receive|push pull|male female|men women|boy girl|"
    "positive negative|gain lose|input output|rise fall|cheap expensive|fast slow|early late|big small|old new|"
    "young old|hot cold|love hate|agree disagree|legal illegal|possible impossible|safe unsafe|hire fire|"
    "include exclude|inside outside|north south|east west|above below|first last|pass fail|success failure|"
    "online offline|free paid|encrypt decrypt|encode decode|compress decompress|"
    "ascending descending|uppercase lowercase|upper lower|maximize minimize|maximise minimise|upgrade downgrade|"
    "raise lower|high low|left right|row column|public private|read write|even odd|required optional|"
    "mandatory optional|approve reject|accept decline|merge split|debit credit|inhale exhale|"
    "overweight underweight|benefit drawback|synchronous asynchronous|sync async|undo redo|zip unzip|"
    "add subtract|plus minus|multiply divide|summer winter|day night|morning evening|more fewer|cause prevent|"
    "largest smallest|biggest smallest|bigger smaller|larger smaller|highest lowest|tallest shortest|"
    "taller shorter|longest shortest|longer shorter|better worse|faster slower|fastest slowest|"
    "heavier lighter|heaviest lightest|most least|easier harder|easiest hardest|quickly slowly|cheaper dearer|"
    "richest poorest|richer poorer|oldest youngest|older younger|strongest weakest|stronger weaker|"
    "hottest coldest|hotter colder|closest farthest|nearest farthest|warmer cooler|always never|"
    "included excluded|opened closed|started stopped|enabled disabled|increasing decreasing"
)


NEGATING_PREFIXES = ("un", "dis", "non", "anti", "de", "in", "im", "ir", "il")
MAY_BEFORE = words("in of by until till since early late mid")
PARTICLES = (("on", "off"), ("in", "out"), ("up", "down"))
"""Opposites only after the same verb ("turn on" / "turn off", "sign in" / "sign out", "scroll up" / "scroll
down"): as prepositions they are everywhere ("the smell in my carpet" / "the smell out of my carpet")."""
PARTICLE_VERBS = words(
    "sign log logged logging signed check checked opt zoom plug turn turned turning switch switched switching "
    "scroll scrolling clock cash fade phase tune power powered shut speed slow scale scaling ramp round roll dial "
    "gear step level tone water"
)
"""Verbs whose particle says which way: "sign in" / "sign out", "scale up" / "scale down"."""
