"""A bundled table of countries and their capitals (public geographic facts), the knowledge task's
source. Kept short and unambiguous: one capital each, ASCII spelling."""

CAPITALS: tuple[tuple[str, str], ...] = (
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
    ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Belgium", "Brussels"), ("Ireland", "Dublin"),
    ("Norway", "Oslo"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"),
    ("Poland", "Warsaw"), ("Greece", "Athens"), ("Hungary", "Budapest"), ("Romania", "Bucharest"),
    ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"), ("Croatia", "Zagreb"), ("Ukraine", "Kyiv"),
    ("Russia", "Moscow"), ("Turkey", "Ankara"), ("Egypt", "Cairo"), ("Kenya", "Nairobi"),
    ("Ghana", "Accra"), ("Nigeria", "Abuja"), ("Morocco", "Rabat"), ("Ethiopia", "Addis Ababa"),
    ("Senegal", "Dakar"), ("Peru", "Lima"), ("Chile", "Santiago"), ("Argentina", "Buenos Aires"),
    ("Colombia", "Bogota"), ("Venezuela", "Caracas"), ("Cuba", "Havana"), ("Mexico", "Mexico City"),
    ("Canada", "Ottawa"), ("Japan", "Tokyo"), ("China", "Beijing"), ("India", "New Delhi"),
    ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"), ("Indonesia", "Jakarta"), ("Iran", "Tehran"),
    ("Iraq", "Baghdad"), ("Nepal", "Kathmandu"), ("Mongolia", "Ulaanbaatar"), ("Philippines", "Manila"),
    ("Australia", "Canberra"), ("Iceland", "Reykjavik"), ("Estonia", "Tallinn"), ("Latvia", "Riga"),
    ("Lithuania", "Vilnius"), ("Slovakia", "Bratislava"), ("Slovenia", "Ljubljana"), ("Qatar", "Doha"),
    ("Jordan", "Amman"), ("Lebanon", "Beirut"), ("Syria", "Damascus"), ("Uganda", "Kampala"),
)

WORDS: tuple[str, ...] = tuple(
    "apple river stone cloud green house light paper water table music garden bread chair plant "
    "money smile dream night winter summer ocean forest candle mirror letter silver golden pencil "
    "window rabbit turtle spider monkey tiger horse bottle basket button carpet castle dragon engine "
    "finger flower guitar hammer island jacket kettle ladder marble needle orange parrot pepper pillow "
    "planet pocket rocket saddle shadow singer sister spoon square street sugar sword ticket tomato "
    "tunnel valley violin wallet wizard yellow zipper anchor barrel bridge camera circle cotton doctor "
    "feather harbor jungle lemon magnet meadow noodle pirate puzzle ribbon salmon temple thunder velvet".split()
)
